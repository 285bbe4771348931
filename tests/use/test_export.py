"""`tunesmith export`: the exported folder loads with plain transformers and answers exactly as the run does."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import ExportConfig
from tunesmith.errors import RunError
from tunesmith.use.export import export_run

PROMPTS = ["What is a lighthouse?", "Name three colours.", "hi", "Why do cats purr?", "Translate 'dog' to French."]


@pytest.fixture(scope="module")
def lora_run(varied_model_dir, tmp_path_factory):
    """A run folder laid out as training leaves it: config.yaml, model/ with a LoRA adapter, tokenizer and
    tunesmith.json. The adapter's B matrices are random, so merging changes the answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.config import TrainingConfig
    from tunesmith.models import apply_lora

    run = tmp_path_factory.mktemp("runs") / "lora-run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  name: {varied_model_dir}\ntraining:\n  method: lora\n")
    torch.manual_seed(2)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32),
                       TrainingConfig(lora_r=4))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(varied_model_dir).save_pretrained(run / "model")
    info = {"base_model": str(varied_model_dir), "method": "lora", "model": {"name": str(varied_model_dir)},
            "template": {"name": "chat", "system_prompt": "Be brief.", "jinja": None}}
    (run / "model" / "tunesmith.json").write_text(json.dumps(info))
    return run


def _greedy_tokens(model, tokenizer, prompts, max_new_tokens=8):
    import torch

    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                       do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(generated[0, ids.shape[1]:].tolist())
    return out


def test_merged_export_answers_like_the_run(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.use.generation import load_for_inference

    result = export_run(str(lora_run), str(tmp_path / "out"), ExportConfig(merge=True))
    assert result.merged and not (result.out / "adapter_config.json").exists()

    generator = load_for_inference(str(lora_run), precision="fp32")
    rendered = [generator.render(p) for p in PROMPTS]
    run_tokens = _greedy_tokens(generator.model, generator.tokenizer, rendered)

    exported = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.out)
    assert _greedy_tokens(exported, tokenizer, rendered) == run_tokens

    base = load_for_inference(str(lora_run), which="base", precision="fp32")
    assert _greedy_tokens(base.model, base.tokenizer, rendered) != run_tokens  # the adapter matters

    info = json.loads((result.out / "tunesmith.json").read_text())
    assert info["method"] == "full" and info["merged_from"] == "lora"
    assert info["template"]["system_prompt"] == "Be brief."
    assert load_for_inference(str(result.out), precision="fp32").render("hi") == generator.render("hi")


def test_merged_weights_match_the_adapter_model(lora_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export_run(str(lora_run), str(tmp_path / "out"), ExportConfig(merge=True))
    base = AutoModelForCausalLM.from_pretrained(json.loads((lora_run / "model" / "tunesmith.json").read_text())[
        "base_model"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(lora_run / "model")).eval()
    exported = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 400, 500, 600, 700]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, exported(ids).logits, atol=1e-4)


def test_adapter_export_without_merge(lora_run, tmp_path):
    result = export_run(str(lora_run), str(tmp_path / "out"))
    assert not result.merged
    assert (result.out / "adapter_config.json").is_file() and (result.out / "tunesmith.json").is_file()


def test_bf16_export_stores_bf16(lora_run, tmp_path):
    from safetensors import safe_open

    result = export_run(str(lora_run), str(tmp_path / "out"), ExportConfig(merge=True, dtype="bf16"))
    with safe_open(result.out / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}


def test_refuses_to_overwrite_other_folders(lora_run, tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not an earlier export"):
        export_run(str(lora_run), str(other), ExportConfig(merge=True))
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(RunError, match="outside the run"):
        export_run(str(lora_run), str(lora_run / "exported"), ExportConfig(merge=True))


def test_reexport_replaces_an_earlier_export(lora_run, tmp_path):
    export_run(str(lora_run), str(tmp_path / "out"))
    result = export_run(str(lora_run), str(tmp_path / "out"), ExportConfig(merge=True))
    assert not (result.out / "adapter_config.json").exists()


def test_not_a_run(tiny_model_dir, tmp_path):
    with pytest.raises(RunError, match="not a run folder"):
        export_run(str(tiny_model_dir), str(tmp_path / "out"))


class TestGGUF:
    # slow: transformers converts the GGUF's 49k-token vocabulary in Python (~25 s)
    @pytest.mark.slow
    def test_gguf_loads_back_with_the_same_weights_and_tokenizer(self, lora_run, tmp_path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        result = export_run(str(lora_run), str(tmp_path / "out"), ExportConfig(merge=True, gguf=True))
        assert result.gguf is not None and result.gguf.is_file()
        exported = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32).eval()
        # transformers undoes llama.cpp's q/k layout on load, so equal logits prove the layout was written right
        from_gguf = AutoModelForCausalLM.from_pretrained(result.out, gguf_file=result.gguf.name,
                                                         dtype=torch.float32).eval()
        text = "Hello world, 123 tokens!<|im_end|>"
        tokenizer = AutoTokenizer.from_pretrained(result.out)
        gguf_tokenizer = AutoTokenizer.from_pretrained(result.out, gguf_file=result.gguf.name)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        with torch.no_grad():
            expected, got = exported(torch.tensor([ids])).logits, from_gguf(torch.tensor([ids])).logits
        assert torch.allclose(expected, got, atol=1e-5)

    def test_gguf_of_an_unmerged_adapter_is_its_base_plus_a_gguf_adapter(self, lora_run, tmp_path):
        import gguf

        result = export_run(str(lora_run), str(tmp_path / "out"), ExportConfig(gguf=True))
        assert not result.merged and result.gguf.name == "out.base.f32.gguf"
        reader = gguf.GGUFReader(result.adapter)
        assert bytes(reader.fields["general.type"].parts[-1]).decode() == "adapter"
        assert any(t.name == "blk.0.attn_q.weight.lora_b" for t in reader.tensors)


def test_bf16_inference_of_run_and_export_agree(lora_run, tmp_path):
    """Both merge in fp32 and cast afterwards, so even in bf16 the run and its export answer alike."""
    import torch

    from tunesmith.use.generation import load_for_inference

    result = export_run(str(lora_run), str(tmp_path / "out"), ExportConfig(merge=True))
    run = load_for_inference(str(lora_run), precision="bf16")
    exported = load_for_inference(str(result.out), precision="bf16")
    for (name, a), (_, b) in zip(run.model.state_dict().items(), exported.model.state_dict().items()):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b), name
