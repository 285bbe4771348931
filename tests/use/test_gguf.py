"""GGUF export proven by running it: llama.cpp (llama-cpp-python) answers like transformers, token for token.

The runs here are tiny models with the real SmolLM2 tokenizer. `stopping_run` is trained for a few dozen steps on
its own test prompts, so its greedy answers are real sentences that end with `<|im_end|>`: the check that every
answer stops means something.
"""

from __future__ import annotations

import json

import pytest

from tunesmith.config import ExportConfig, TemplateConfig
from tunesmith.errors import ModelError
from tunesmith.use.export import export_run

QA = [("What colour is the Wren kettle?", "Green."), ("How heavy is the Finch toaster?", "It weighs 1.2 kilograms."),
      ("Who makes the Heron mixer?", "Larkspur makes it."), ("When was the Robin frother released?", "In 2021.")]
SYSTEM = "Be brief."


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'tunesmith[gguf]')")


def _records(shift: int = 0):
    """The QA pairs as records; `shift` gives each question the answer of the one `shift` places on."""
    from tunesmith.data.records import Record

    answers = [a for _, a in QA[shift:] + QA[:shift]]
    return [Record("qa.jsonl", i + 1, "qa", prompt=q, response=a) for i, ((q, _), a) in enumerate(zip(QA, answers))]


def _overfit(model, tokenizer, template, steps: int = 25, lr: float = 2e-2, records=None) -> None:
    """A few Adam steps on one padded batch of the records' answers (prompts masked, tunesmith's own
    tokenization), so the model answers them and stops (about 3 s of CPU)."""
    import torch

    from tunesmith.config import TokenizationConfig
    from tunesmith.prepare.tokenization import IGNORE_INDEX, full_example, tokenize_records

    examples = [full_example(t, TokenizationConfig()) for t in tokenize_records(records or _records(), tokenizer, template)]
    width = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([i + [2] * (width - len(i)) for i, _ in examples])
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in examples])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in examples])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    model.eval()


def _make_run(root, model, tokenizer, info: dict):
    from tunesmith.data.records import record_to_dict

    (root / "model").mkdir(parents=True)
    (root / "prepared").mkdir()
    (root / "config.yaml").write_text(f"model:\n  name: {info['base_model']}\n")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "model" / "tunesmith.json").write_text(json.dumps(info))
    with open(root / "prepared" / "test_records.jsonl", "w") as f:
        for record in _records():
            f.write(json.dumps(record_to_dict(record)) + "\n")
    return root


@pytest.fixture(scope="module")
def stopping_run(tiny_model_dir, tokenizer, tmp_path_factory):
    """A full-finetuning run (chat template, system prompt) whose answers stop at `<|im_end|>`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    template = TemplateConfig(name="chat", system_prompt=SYSTEM)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    _overfit(model, tokenizer, template)
    info = {"base_model": str(tiny_model_dir), "method": "full", "model": {"name": str(tiny_model_dir)},
            "template": template.model_dump()}
    return _make_run(tmp_path_factory.mktemp("runs") / "stopping-run", model, tokenizer, info)


@pytest.fixture(scope="module")
def lora_stopping_run(stopping_run, tokenizer, tmp_path_factory):
    """A LoRA run on top of `stopping_run`'s model, trained to give each question another question's answer:
    the adapter changes the answers, and they still stop."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.config import TrainingConfig
    from tunesmith.models import apply_lora

    torch.manual_seed(0)
    base = str(stopping_run / "model")
    template = TemplateConfig(name="chat", system_prompt=SYSTEM)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), TrainingConfig(lora_r=8))
    _overfit(model, tokenizer, template, records=_records(shift=1))
    info = {"base_model": base, "method": "lora", "model": {"name": base}, "template": template.model_dump()}
    return _make_run(tmp_path_factory.mktemp("runs") / "lora-stopping-run", model, tokenizer, info)


class TestVerify:
    def test_f16_answers_exactly_like_the_run_in_llama_cpp(self, stopping_run, tmp_path):
        """The acceptance test: exported, run in llama.cpp, every answer identical and stopping."""
        _llama_cpp()
        result = export_run(str(stopping_run), str(tmp_path / "out"),
                            ExportConfig(quant="f16", ollama=True, verify=4, verify_max_new_tokens=24),
                            progress=False)
        report = result.verification
        assert result.gguf.name == "out.f16.gguf" and result.gguf.is_file()
        assert report.passed, report.table()
        assert report.agreement == 1.0 and report.identical == 4 and len(report.answers) == 4
        for answer in report.answers:
            assert answer.prompt_tokens_agree and answer.template_agrees
            assert answer.reference_stopped and answer.gguf_stopped and answer.reference == answer.gguf
            assert answer.reference[-1] == 2 and 2 < len(answer.reference) < 24  # a sentence, then <|im_end|>
        saved = json.loads((result.out / "verify.json").read_text())
        assert saved["passed"] and saved["agreement"] == 1.0

    @pytest.mark.slow
    def test_q8_0_and_q4_k_m_through_llama_cpp(self, stopping_run, tmp_path):
        import gguf

        _llama_cpp()
        q8 = export_run(str(stopping_run), str(tmp_path / "q8"), ExportConfig(quant="q8_0", verify=4,
                                                                              verify_max_new_tokens=24), progress=False)
        assert q8.verification.passed and q8.verification.agreement >= 0.9, q8.verification.table()
        q4 = export_run(str(stopping_run), str(tmp_path / "q4"), ExportConfig(quant="q4_k_m"))
        reader = gguf.GGUFReader(q4.gguf)
        assert int(reader.fields["general.file_type"].parts[-1][0]) == gguf.LlamaFileType.MOSTLY_Q4_K_M
        assert not list(q4.out.glob("*.tmp")) and q4.gguf.stat().st_size < q8.gguf.stat().st_size

    @pytest.mark.slow
    def test_lora_adapter_gguf_answers_like_the_merged_run(self, lora_stopping_run, tmp_path):
        """Base GGUF + GGUF adapter in llama.cpp against the run's PEFT model in transformers."""
        _llama_cpp()
        result = export_run(str(lora_stopping_run), str(tmp_path / "out"),
                            ExportConfig(quant="f32", ollama=True, verify=4, verify_max_new_tokens=24),
                            progress=False)
        assert result.gguf.name == "out.base.f32.gguf" and result.adapter.name == "out.lora.gguf"
        report = result.verification
        assert report.passed and report.agreement == 1.0, report.table()
        assert "ADAPTER ./out.lora.gguf" in (result.out / "Modelfile").read_text()
        base_only = _greedy_llama_cpp(result.gguf, report.answers[0])
        assert base_only != report.answers[0].gguf  # the adapter changes the answer

    def test_report_fails_below_the_bar_or_without_a_stop(self):
        from tunesmith.use.gguf_verify import AnswerCheck, VerifyReport

        def answer(matched, stopped=True):
            return AnswerCheck("q", True, True, [1] * 10, [1] * matched, 10, matched, matched, True, stopped)

        assert VerifyReport("m", "q8_0", 32, [answer(10), answer(9)]).passed  # 95%
        low = VerifyReport("m", "q8_0", 32, [answer(10), answer(7)])
        assert not low.passed and "85.0% is below the 90% bar" in low.problems[0]
        assert not VerifyReport("m", "f16", 32, [answer(10), answer(9)]).passed
        diverged = AnswerCheck("q", True, True, [1] * 10, [1, 5], 10, 1, 10, True, True)  # all forced, not free
        assert VerifyReport("m", "q8_0", 32, [diverged]).passed
        assert "1 answers not identical" in VerifyReport("m", "f16", 32, [diverged]).problems[0]
        unstopped = VerifyReport("m", "q4_k_m", 32, [answer(3, stopped=False)])
        assert unstopped.problems == ["1 answers that did not stop at an end token in llama.cpp"]
        assert "FAIL" in unstopped.table()

    @pytest.mark.slow
    def test_cli_exits_nonzero_when_verification_fails(self, stopping_run, tmp_path, capsys):
        _llama_cpp()
        from tunesmith.cli import main

        # 3 new tokens cannot hold an answer and its end token: the stop check fails
        code = main(["export", str(stopping_run), "--out", str(tmp_path / "out"), "--quant", "f16",
                     "--verify", "2", "--verify-max-new-tokens", "3"])
        captured = capsys.readouterr()
        assert code == 1 and "did not stop" in captured.err and "agreement 100.0%" in captured.out


def _greedy_llama_cpp(path, answer, n: int = 8) -> list[int]:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=256, verbose=False)
    try:
        llm.eval(llm.tokenize(answer.prompt.encode(), add_bos=True, special=True))
        out = []
        for _ in range(n):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([out[-1]])
        return out
    finally:
        llm.close()


FAMILIES = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", {"tie_word_embeddings": False, "sliding_window": None}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 16, "tie_word_embeddings": True}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "phi3": ("Phi3Config", {"tie_word_embeddings": False}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_runs_in_llama_cpp_like_transformers(family, tokenizer, tokenizer_dir, tmp_path):
    """A tiny random model of each family (biases and norms randomized too), written as GGUF and run in llama.cpp:
    logits within 1% of their range, the same next-token choice wherever it is not a near-tie."""
    import numpy as np
    import torch
    import transformers

    from tunesmith.use.gguf import write_gguf

    llama_cpp = _llama_cpp()
    config_class, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        initializer_range=0.2, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.3)
    path = write_gguf(model, tokenizer, tokenizer_dir, tmp_path / f"tiny-{family[:3]}.gguf", "f32")
    ids = tokenizer("Hello world, what is up? Tell me about 42 cats.", add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    difference = np.abs(got - expected).max()
    assert difference < 0.01 * (expected.max() - expected.min())
    top2 = np.sort(expected, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * difference  # near-ties of random weights may go either way
    assert clear.sum() >= len(ids) // 2 and (got.argmax(-1) == expected.argmax(-1))[clear].all()


class TestChatMetadata:
    @pytest.mark.parametrize("template", [TemplateConfig(name="chat"), TemplateConfig(name="chat", system_prompt=SYSTEM),
                                          TemplateConfig(name="alpaca"), TemplateConfig(name="qa")],
                             ids=["chat", "chat+system", "alpaca", "qa"])
    def test_gguf_template_renders_prompts_as_the_run_does(self, template, tokenizer):
        """llama-cpp-python's own Jinja formatter, given the GGUF's template, builds the run's prompt."""
        _llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from tunesmith.data.records import Record
        from tunesmith.prepare.templates import render_prompt
        from tunesmith.use.gguf_chat import jinja_chat_template, turn_format

        fmt = turn_format(template, tokenizer)
        formatter = Jinja2ChatFormatter(jinja_chat_template(fmt), eos_token="", bos_token="")
        for system in (None, "Answer in French."):
            record = Record("f", 1, "qa", prompt="What is 2+2?", response="4", system=system)
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": "What is 2+2?"}]
            assert formatter(messages=messages).prompt == render_prompt(record, template, tokenizer)

    def test_metadata_names_the_end_of_turn_token(self, stopping_run, tmp_path):
        import gguf

        result = export_run(str(stopping_run), str(tmp_path / "out"), ExportConfig(quant="q8_0"))
        reader = gguf.GGUFReader(result.gguf)

        def value(key):
            field = reader.fields[key]
            return bytes(field.parts[-1]).decode() if field.types[0] == gguf.GGUFValueType.STRING else \
                field.parts[-1][0]

        assert value("tokenizer.ggml.eos_token_id") == 2
        assert "Be brief." in value("tokenizer.chat_template")
        assert int(value("general.file_type")) == gguf.LlamaFileType.MOSTLY_Q8_0
        assert not value("tokenizer.ggml.add_bos_token")


GO_RENDERER = """package main

import (
\t"encoding/json"
\t"os"
\t"strings"
\t"text/template"
)

type Message struct {
\tRole    string `json:"role"`
\tContent string `json:"content"`
}

func main() {
\tvar job struct {
\t\tTemplate      string      `json:"template"`
\t\tConversations [][]Message `json:"conversations"`
\t}
\tif err := json.NewDecoder(os.Stdin).Decode(&job); err != nil {
\t\tpanic(err)
\t}
\tparsed := template.Must(template.New("modelfile").Parse(job.Template))
\tout := []string{}
\tfor _, messages := range job.Conversations {
\t\tvar text strings.Builder
\t\tif err := parsed.Execute(&text, map[string]any{"Messages": messages}); err != nil {
\t\t\tpanic(err)
\t\t}
\t\tout = append(out, text.String())
\t}
\tjson.NewEncoder(os.Stdout).Encode(out)
}
"""
"""Executes a TEMPLATE as Ollama does (Go's text/template, `.Messages` of role/content) for each conversation."""


class TestModelfile:
    def test_chatml_modelfile(self, stopping_run, tmp_path):
        result = export_run(str(stopping_run), str(tmp_path / "My-Run"), ExportConfig(quant="q8_0", ollama=True))
        text = result.modelfile.read_text()
        assert text.startswith("FROM ./My-Run.q8_0.gguf\n")
        template = ('TEMPLATE """{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
                    '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
                    '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
                    '{{ if $last }}<|im_start|>assistant\n{{ end }}'
                    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}'
                    '{{ if not $last }}<|im_end|>\n{{ end }}{{ end }}{{ end }}"""\n')
        assert template in text
        assert 'SYSTEM """Be brief."""\n' in text
        assert 'PARAMETER stop "<|im_end|>"\n' in text and 'PARAMETER stop "<|im_start|>"\n' in text
        readme = (result.out / "README.md").read_text()
        assert "ollama create my-run -f Modelfile" in readme and "ollama run my-run" in readme

    def test_turns_render_like_the_run_template(self, tokenizer):
        """The Go template is written from these turns; they rebuild the chat template's text exactly."""
        from tunesmith.use.gguf_chat import SAMPLE_CONVERSATIONS, turn_format

        fmt = turn_format(TemplateConfig(name="chat"), tokenizer)
        assert fmt.default_system.startswith("You are a helpful AI assistant named SmolLM")
        for messages in SAMPLE_CONVERSATIONS:
            assert fmt.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                         add_generation_prompt=True)

    @pytest.mark.parametrize("template", [TemplateConfig(name="chat", system_prompt=SYSTEM), TemplateConfig(name="qa")],
                             ids=["chat+system", "qa"])
    def test_ollama_template_renders_like_the_run_in_go(self, template, tokenizer, tmp_path):
        """Ollama executes TEMPLATE with Go's text/template over `.Messages`, after putting SYSTEM first when a
        conversation has no system message; Go itself renders it here (Ollama is not installable here)."""
        import os
        import shutil
        import subprocess

        from tunesmith.use.gguf_chat import SAMPLE_CONVERSATIONS, ollama_template, turn_format

        go = shutil.which("go")
        if go is None:
            pytest.skip("the Go toolchain is not installed (apt-get install golang-go)")
        fmt = turn_format(template, tokenizer)
        conversations = [list(c) for c in SAMPLE_CONVERSATIONS[:2]]
        as_ollama = [c if c[0]["role"] == "system" or fmt.default_system is None else
                     [{"role": "system", "content": fmt.default_system}, *c] for c in conversations]
        (tmp_path / "render.go").write_text(GO_RENDERER)
        job = json.dumps({"template": ollama_template(fmt), "conversations": as_ollama})
        env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"),
               "GOFLAGS": "-mod=mod", "GO111MODULE": "off"}
        done = subprocess.run([go, "run", str(tmp_path / "render.go")], input=job, capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        from tunesmith.data.records import Record
        from tunesmith.prepare.templates import render_prompt

        for rendered, conversation in zip(json.loads(done.stdout), conversations):
            system = conversation[0]["content"] if conversation[0]["role"] == "system" else None
            record = Record("f", 1, "qa", prompt=conversation[-1]["content"], response="", system=system)
            assert rendered == fmt.render(conversation) == render_prompt(record, template, tokenizer)

    def test_alpaca_modelfile_has_no_system_and_stops_at_eos(self, tokenizer):
        from tunesmith.use.gguf_chat import modelfile, stop_texts, turn_format

        fmt = turn_format(TemplateConfig(name="alpaca"), tokenizer)
        text = modelfile("m.gguf", fmt, stop_texts(tokenizer, fmt, [2]))
        assert "SYSTEM" not in text and 'PARAMETER stop "<|im_end|>"' in text
        assert "### Instruction:\n{{ .Content }}\n\n### Response:" in text

    def test_literal_braces_are_escaped_for_go(self):
        from tunesmith.use.gguf_chat import TurnFormat, ollama_template

        fmt = TurnFormat("", "", "{{user}}: ", "\n", "", "\n")
        assert '{{ "{{" }}user}}: {{ .Content }}' in ollama_template(fmt)


class TestRefusals:
    def test_unknown_quant_names_the_supported_ones(self):
        from tunesmith.use.gguf import check_quant

        with pytest.raises(ModelError, match="choose one of f32, f16, bf16, q8_0, .*q4_k_m"):
            check_quant("q3_xx")

    def test_other_architectures_get_a_clear_error(self, tokenizer, tmp_path):
        from types import SimpleNamespace

        from tunesmith.use.gguf import write_gguf

        model = SimpleNamespace(config=SimpleNamespace(model_type="gpt_neox"))
        with pytest.raises(ModelError, match="architecture 'gpt_neox' .*llama, mistral, qwen2, qwen3, gemma, phi3"):
            write_gguf(model, tokenizer, tmp_path, tmp_path / "m.gguf", "f32")
        assert not (tmp_path / "m.gguf").exists()

    def test_rope_scaling_is_refused(self):
        from transformers import LlamaConfig

        from tunesmith.use.gguf import shape_of

        config = LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
        with pytest.raises(ModelError, match="rope scaling 'yarn'"):
            shape_of(config)

    def test_jinja_template_with_ollama_is_refused_before_writing(self, tokenizer, stopping_run, tmp_path):
        info_file = stopping_run / "model" / "tunesmith.json"
        original = info_file.read_text()
        info = json.loads(original)
        info["template"] = {"name": "jinja", "jinja": "Q: {{ prompt }}\nA:"}
        info_file.write_text(json.dumps(info))
        try:
            with pytest.raises(ModelError, match="template.name=jinja"):
                export_run(str(stopping_run), str(tmp_path / "out"), ExportConfig(ollama=True))
        finally:
            info_file.write_text(original)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe"])
def test_qwen2_and_llama3_pre_tokenizers_split_as_in_llama_cpp(pre, tokenizer_dir, tiny_model_dir, tmp_path):
    """The SmolLM2 vocabulary behind Qwen2's (or Llama 3's) split regex: llama.cpp, told the matching
    pre-tokenizer name, tokenizes tricky text (digit runs, contractions, newlines) exactly as transformers does."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.use.gguf import GGUF_SPLIT_REGEXES, pre_tokenizer_name, write_gguf

    llama_cpp = _llama_cpp()
    regex = next(r for r, name in GGUF_SPLIT_REGEXES.items() if name == pre)
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    tok = AutoTokenizer.from_pretrained(folder)
    assert pre_tokenizer_name(tok) == pre
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    path = write_gguf(model, tok, folder, tmp_path / "tiny.gguf", "f32")
    text = "It's 12345 euros,\n\n  they'll   say: <|im_end|> DON'T 3.14159!\tOK"
    llm = llama_cpp.Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)[
            "input_ids"]
    finally:
        llm.close()
