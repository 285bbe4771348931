"""The saved model: full weights reload with plain transformers, the LoRA adapter and merged model with plain
PEFT, and `tunesmith.json` records the base model, method and the resolved template."""

from __future__ import annotations

import json

import torch

from training_runs import train_run


def logits_of(model, tokenizer):
    ids = tokenizer(["Who makes the Heron mixer? Larkspur"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_model_reloads_with_plain_transformers(make_run, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, paths = make_run("training.method=full", "training.learning_rate=1e-3", "training.max_steps=2")
    result = train_run(config, paths)
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    torch.testing.assert_close(logits_of(reloaded, tokenizer), logits_of(result.model, tokenizer))
    assert AutoTokenizer.from_pretrained(result.model_dir).chat_template
    info = json.loads((result.model_dir / "tunesmith.json").read_text())
    assert info["method"] == "full" and info["base_model"] == config.model.name
    assert info["template"]["name"] in {"chat", "alpaca", "qa"}  # resolved, never "auto"


def test_lora_adapter_and_merged_model_reload_with_plain_peft(make_run, tokenizer, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, paths = make_run("training.method=lora", "training.learning_rate=1e-2", "training.max_steps=2",
                             "training.merge_lora=true")
    result = train_run(config, paths)
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = PeftModel.from_pretrained(base, result.model_dir).eval()
    expected = logits_of(result.model, tokenizer)
    torch.testing.assert_close(logits_of(adapter, tokenizer), expected, rtol=1e-5, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    torch.testing.assert_close(logits_of(merged, tokenizer), expected, rtol=1e-5, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not torch.allclose(logits_of(plain, tokenizer), expected)  # training changed something


class TestRunInfo:
    """`run_info` takes the template it is handed (the trainer reads no config file), resolved by the manifest."""

    def manifest(self, template: str):
        from tunesmith.prepare.manifest import Counts, Manifest, SourceFile

        return Manifest(source=SourceFile(path="qa.jsonl", sha256="0"), config_hash="h", model="m",
                        template=template, shape="qa", shape_reason="r", max_length=64, max_length_setting="auto",
                        model_context=2048, train_on="responses", tokens={}, created="now",
                        counts=Counts(records=1, skipped_invalid=0, train=1, test=0, truncated=0, dropped=0))

    def test_auto_becomes_the_template_preparation_used(self, tiny_model_dir):
        from tunesmith.config import ModelConfig, TemplateConfig, TrainingConfig
        from tunesmith.train.artifacts import run_info

        info = run_info(ModelConfig(name=str(tiny_model_dir)), TrainingConfig(method="lora"),
                        TemplateConfig(name="auto", system_prompt="Be brief."), self.manifest("chat"))
        assert info["template"] == {"name": "chat", "system_prompt": "Be brief.", "jinja": None}
        assert (info["method"], info["max_length"], info["train_on"]) == ("lora", 64, "responses")

    def test_a_jinja_file_is_recorded_by_its_text(self, tmp_path, tiny_model_dir):
        from tunesmith.config import ModelConfig, TemplateConfig, TrainingConfig
        from tunesmith.train.artifacts import run_info

        (tmp_path / "prompt.jinja").write_text("Q: {{ prompt }}\nA:")
        template = TemplateConfig(name="jinja", jinja=str(tmp_path / "prompt.jinja"))
        info = run_info(ModelConfig(name=str(tiny_model_dir)), TrainingConfig(), template, self.manifest("jinja"))
        assert info["template"]["jinja"] == "Q: {{ prompt }}\nA:"
