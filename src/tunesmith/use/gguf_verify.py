"""Proof that a GGUF answers like the run: the same prompts, greedily, through llama.cpp and through transformers.

Each held-out test prompt of the run is rendered with the run's template (`use.generation`) and answered by the
run's model in fp32 (the reference) and by the GGUF in llama.cpp (`llama-cpp-python`). What is compared are token
ids, not texts:
- the prompt tokens: llama.cpp tokenizes the rendered prompt itself (BOS by the file's `add_bos_token`), and
  must get transformers' ids; the GGUF's own chat template must render the same prompt text;
- the answers: greedy, both from the same prompt ids. Agreement is counted teacher-forced: at each of the first
  `compare_tokens` positions of the run's answer, does llama.cpp pick the run's next token (one near-tie flipped
  by rounding then costs one token, not the rest of the answer); and whether the free-running answers are
  identical on those tokens;
- the end: both answers must stop at an end token (llama.cpp's end-of-generation set, read from the file).

Bars: f32 and f16 agree exactly (every free-running answer identical on its first tokens), bf16 and q8_0 on at
least 90% of the compared tokens; lower-bit types are measured and reported without a bar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tunesmith.errors import RunError
from tunesmith.runs import RunPaths, read_jsonl

AGREEMENT_BARS = {"f32": 1.0, "f16": 1.0, "bf16": 0.9, "q8_0": 0.9}
"""Least share of compared answer tokens that must agree, by GGUF type; other types are reported only. A bar of
1.0 also asks every free-running answer to be identical."""


@dataclass(frozen=True)
class AnswerCheck:
    """One prompt answered both ways."""

    prompt: str
    prompt_tokens_agree: bool
    template_agrees: bool
    reference: list[int]
    gguf: list[int]
    compared: int
    matched: int
    """Leading tokens the free-running answers share (at most `compared`)."""
    forced_matched: int
    """Positions of the run's answer where llama.cpp, fed the run's tokens so far, picks the run's next token."""
    reference_stopped: bool
    gguf_stopped: bool


@dataclass
class VerifyReport:
    """Agreement of a GGUF with the run over N prompts, and whether it clears the bar of its type."""

    gguf: str
    quant: str
    compare_tokens: int
    answers: list[AnswerCheck] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        compared = sum(a.compared for a in self.answers)
        return sum(a.forced_matched for a in self.answers) / compared if compared else 1.0

    @property
    def identical(self) -> int:
        """Answers whose free-running tokens are identical on the compared length."""
        return sum(a.matched == a.compared for a in self.answers)

    @property
    def bar(self) -> float | None:
        return AGREEMENT_BARS.get(self.quant)

    @property
    def problems(self) -> list[str]:
        """Why the GGUF does not answer like the run (empty when it does)."""
        found = []
        if self.bar is not None and self.agreement < self.bar:
            found.append(f"token agreement {self.agreement:.1%} is below the {self.bar:.0%} bar of {self.quant}")
        if self.bar == 1.0 and self.identical < len(self.answers):
            found.append(f"{len(self.answers) - self.identical} answers not identical on their first "
                         f"{self.compare_tokens} tokens ({self.quant} must agree exactly)")
        for name, bad in (("prompts tokenized differently by llama.cpp", [a for a in self.answers
                                                                          if not a.prompt_tokens_agree]),
                          ("prompts rendered differently by the GGUF's chat template",
                           [a for a in self.answers if not a.template_agrees]),
                          ("answers that did not stop at an end token in transformers",
                           [a for a in self.answers if not a.reference_stopped]),
                          ("answers that did not stop at an end token in llama.cpp",
                           [a for a in self.answers if not a.gguf_stopped])):
            if bad:
                found.append(f"{len(bad)} {name}")
        return found

    @property
    def passed(self) -> bool:
        return not self.problems

    def table(self) -> str:
        """One line per prompt and the overall figure, for the terminal."""
        rows = [f"{'#':>3}  {'agree':>7}  {'same run':>8}  {'prompt ids':>10}  {'stop hf/gguf':>12}  prompt"]
        for i, a in enumerate(self.answers, 1):
            stop = f"{'yes' if a.reference_stopped else 'NO'}/{'yes' if a.gguf_stopped else 'NO'}"
            text = " ".join(a.prompt.split())[:48]
            rows.append(f"{i:>3}  {a.forced_matched:>3}/{a.compared:<3}  {a.matched:>3}/{a.compared:<4}"
                        f"  {'same' if a.prompt_tokens_agree else 'DIFFER':>10}"
                        f"  {stop:>12}  {text}")
        bar = f"bar {self.bar:.0%}" if self.bar is not None else "no bar for this type"
        rows.append(f"agreement {self.agreement:.1%} on the first {self.compare_tokens} answer tokens of "
                    f"{len(self.answers)} prompts, {self.identical} answers identical ({self.quant}, {bar}): "
                    f"{'PASS' if self.passed else 'FAIL'}")
        rows += [f"  - {p}" for p in self.problems]
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {"gguf": self.gguf, "quant": self.quant, "compare_tokens": self.compare_tokens,
                "agreement": self.agreement, "identical": self.identical, "bar": self.bar, "passed": self.passed, "problems": self.problems,
                "answers": [asdict(a) for a in self.answers]}


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two answers share.

    >>> common_prefix([5, 6, 7], [5, 6, 9, 7])
    2
    """
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def held_out_prompts(run_root: Path, n: int) -> list:
    """The first `n` held-out test records of the run (`prepared/test_records.jsonl`).

    Raises:
        RunError: the run has no prepared test split.
    """
    from tunesmith.data import record_from_dict

    records_file = RunPaths(run_root).prepared / "test_records.jsonl"
    if not records_file.is_file():
        raise RunError(f"--verify: {run_root} has no held-out test prompts ({records_file} is missing); "
                       f"verify the export of a run prepared by `tunesmith data prepare`")
    return [record_from_dict(row) for row in read_jsonl(records_file)[:n]]


def greedy_reference(generator, prompt_ids: list[int], max_new_tokens: int, end_ids: set[int]) -> tuple[list[int], bool]:
    """The run's greedy answer ids (the end token included) and whether it stopped."""
    import torch

    from tunesmith.use.generation import GenerationOptions, _generation_config

    ids = torch.tensor([prompt_ids], device=generator.model.device)
    config = _generation_config(generator.tokenizer, GenerationOptions(max_new_tokens=max_new_tokens), end_ids)
    with torch.inference_mode():
        out = generator.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    new = out[0, len(prompt_ids):].tolist()
    end = next((i for i, t in enumerate(new) if t in end_ids), None)
    return (new if end is None else new[:end + 1]), end is not None


def greedy_gguf(llm, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """llama.cpp's greedy answer ids from the same prompt ids (argmax of each step's logits, no sampler chain),
    stopping where llama.cpp itself would: at a token of its end-of-generation set."""
    import numpy as np
    from llama_cpp import llama_get_logits_ith, llama_model_get_vocab, llama_vocab_is_eog

    vocab = llama_model_get_vocab(llm.model)
    llm.reset()
    llm.eval(prompt_ids)
    answer: list[int] = []
    for _ in range(max_new_tokens):
        # the last position's logits, read from the context
        token = int(np.argmax(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))))
        answer.append(token)
        if llama_vocab_is_eog(vocab, token):
            return answer, True
        llm.eval([token])
    return answer, False


def teacher_forced(llm, prompt_ids: list[int], answer: list[int]) -> list[int]:
    """llama.cpp's greedy choice at each answer position when fed the prompt and the run's answer so far."""
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids + answer)
    return [int(t) for t in np.argmax(llm.scores[len(prompt_ids) - 1:len(prompt_ids) - 1 + len(answer)], axis=-1)]


def _gguf_prompt(llm, messages: list[dict]) -> str | None:
    """The prompt llama-cpp-python's chat completion would build from the GGUF's own chat template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    return Jinja2ChatFormatter(template, eos_token="", bos_token="")(messages=messages).prompt


def _messages(record, generator) -> list[dict]:
    from tunesmith.data import as_messages

    messages = [{"role": m.role, "content": m.content} for m in as_messages(record)]
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def verify_gguf(run: str, gguf_path: Path, quant: str, n: int, max_new_tokens: int, compare_tokens: int = 32,
                lora_path: Path | None = None, threads: int | None = None, progress: bool = True) -> VerifyReport:
    """Answer the run's first `n` test prompts both ways and compare (see the module docstring).

    Raises:
        RunError: the run has no test split.
        ModelError: llama-cpp-python is missing or cannot load the file.
    """
    from tqdm import tqdm

    from tunesmith.prepare.tokenization import special_prefix
    from tunesmith.runs import locate_model
    from tunesmith.use.generation import end_token_ids, load_for_inference
    from tunesmith.use.gguf import import_llama_cpp

    llama_cpp = import_llama_cpp("--verify")
    model_dir, _ = locate_model(run)
    root = model_dir.parent if model_dir.name in ("model", "model-merged") else model_dir
    records = held_out_prompts(root, n)
    generator = load_for_inference(run, precision="fp32", device="cpu")
    tokenizer, end_ids = generator.tokenizer, end_token_ids(generator.tokenizer)
    prompts = [generator.render(record) for record in records]
    prefix = special_prefix(tokenizer)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    ids = [row if row[:len(prefix)] == prefix else prefix + row for row in ids]
    n_ctx = max(map(len, ids)) + max_new_tokens + 8
    options = dict(n_ctx=n_ctx, n_batch=min(n_ctx, 2048), logits_all=True, verbose=False, seed=0)
    if threads:
        options.update(n_threads=threads, n_threads_batch=threads)
    if lora_path is not None:
        options["lora_path"] = str(lora_path)
    llm = llama_cpp.Llama(str(gguf_path), **options)
    report = VerifyReport(str(gguf_path), quant, compare_tokens)
    try:
        for record, prompt, prompt_ids in tqdm(list(zip(records, prompts, ids)), desc="verifying", unit="prompt",
                                               disable=not progress):
            reference, ref_stopped = greedy_reference(generator, prompt_ids, max_new_tokens, end_ids)
            answer, gguf_stopped = greedy_gguf(llm, prompt_ids, max_new_tokens)
            own_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            gguf_prompt = _gguf_prompt(llm, _messages(record, generator))
            compared = min(compare_tokens, len(reference))
            forced = teacher_forced(llm, prompt_ids, reference[:compared])
            report.answers.append(AnswerCheck(
                prompt=prompt, prompt_tokens_agree=own_ids == prompt_ids,
                template_agrees=gguf_prompt is None or gguf_prompt == prompt, reference=reference, gguf=answer,
                compared=compared, matched=min(compared, common_prefix(reference, answer)),
                forced_matched=sum(int(x == y) for x, y in zip(forced, reference)),
                reference_stopped=ref_stopped, gguf_stopped=gguf_stopped))
    finally:
        llm.close()
    return report
