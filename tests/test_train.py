"""Training on the tiny model: loss falls, saved models reload exactly, accumulation and resume are exact,
schedules are pure, a NaN or a full disk stops the run cleanly, and the CLI reports mistakes in one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tunesmith.config import TrainingConfig, load_config
from tunesmith.errors import TrainingError
from tunesmith.tokenization import IGNORE_INDEX

QUESTIONS = ["What colour is the Wren kettle?", "How heavy is the Finch toaster?", "Who makes the Heron mixer?",
             "When was the Robin frother released?", "Where is the Swift blender sold?",
             "How much does the Lark scale cost in euros today?", "Can the Owl fan run all night?",
             "Is the Crow lamp dimmable?", "What does the Jay grinder grind?", "Why is the Kite oven so fast?"]
ANSWERS = ["Green.", "It weighs 1.2 kilograms.", "Larkspur makes it.", "In 2021.", "Only in Europe.",
           "It costs 35 euros.", "Yes, it runs quietly all night long.", "Yes.", "Coffee beans and spices.",
           "It has two heating elements and a fan."]


def write_qa(path, n=10):
    with open(path, "w", encoding="utf-8") as f:
        for q, a in list(zip(QUESTIONS, ANSWERS))[:n]:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    return path


@pytest.fixture
def make_run(tmp_path, tiny_model_dir):
    """Prepare a run of the tiny model on 8 train / 2 test examples; returns (config, paths)."""
    from tunesmith.prepare import prepare

    data = write_qa(tmp_path / "qa.jsonl")

    def make(*overrides: str, name: str = "run"):
        config = load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}",
                                    f"output.runs_dir={tmp_path / 'runs'}", f"output.name={name}",
                                    "split.test_size=2", "training.precision=fp32", "training.max_steps=4",
                                    "training.warmup_steps=0", "training.lr_scheduler=constant", *overrides])
        return config, prepare(config).paths

    return make


def train_run(config, paths, resume=False):
    from tunesmith.train import train

    return train(paths, config.model, config.training, resume=resume)


def losses(paths) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, paths.metrics.read_text().splitlines()) if "loss" in m}


@pytest.mark.parametrize("method,lr", [("full", "1e-3"), ("lora", "3e-3")])
def test_a_few_steps_lower_the_training_loss(make_run, method, lr):
    # batch 8 = the whole train split, so every step's loss is on the same examples
    config, paths = make_run(f"training.method={method}", f"training.learning_rate={lr}", "training.max_steps=5")
    result = train_run(config, paths)
    curve = losses(paths)
    assert sorted(curve) == [1, 2, 3, 4, 5]
    assert curve[5] < curve[1] - 0.05
    assert result.final_test_loss is not None and result.steps == 5
    summary = json.loads(paths.train_summary.read_text())
    assert summary["steps"] == 5 and summary["method"] == method and summary["tokens_per_s"] > 0
    assert paths.loss_plot.read_bytes().startswith(b"\x89PNG")


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


@pytest.mark.parametrize("packing", ["true", "false"])
def test_labels_reaching_the_model_mask_prompt_and_padding(make_run, tokenizer, monkeypatch, packing):
    from tunesmith.train import CausalLMLoss

    seen = []
    forward = CausalLMLoss.forward

    def spy(self, input_ids, labels, position_ids=None, attention_mask=None):
        if self.training:  # not the test-loss evaluation
            seen.append((input_ids.clone(), labels.clone(), position_ids.clone()))
        return forward(self, input_ids, labels, position_ids, attention_mask)

    monkeypatch.setattr(CausalLMLoss, "forward", spy)
    config, paths = make_run(f"training.packing={packing}", "training.max_steps=1", "training.batch_size=3",
                             "training.gradient_accumulation_steps=2")
    train_run(config, paths)
    answered = []
    for input_ids, labels, position_ids in seen:
        for ids, labs, pos in zip(input_ids.tolist(), labels.tolist(), position_ids.tolist()):
            # an example (or a padding token) starts wherever the position restarts at 0
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for start, end in zip(starts, starts[1:]):
                learned = [t for t, lab in zip(ids[start:end], labs[start:end]) if lab != IGNORE_INDEX]
                if learned:
                    text = tokenizer.decode(learned)
                    answer = next((a for a in ANSWERS if text.startswith(a)), None)
                    assert answer is not None and text == answer + tokenizer.eos_token, text
                    answered.append(answer)
    assert len(answered) == len(set(answered)) == 6  # batch 3 x accumulation 2, each answer once, nothing else
