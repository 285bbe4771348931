"""Evaluating a run: which models, the chunked response loss against a direct full-logits computation, and a
whole eval of a hand-built run folder into metrics.json and predictions.jsonl."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tunesmith.config import EvalConfig, TemplateConfig, TokenizationConfig, load_config
from tunesmith.data import Record
from tunesmith.errors import RunError
from tunesmith.evaluate import run as ev
from tunesmith.evaluate.metrics import ERROR_CATEGORIES, METRICS


class TestModelLabels:
    def test_run_defaults_to_both(self):
        assert ev.model_labels(None, True, compare_base=True) == ["base", "finetuned"]
        assert ev.model_labels(None, True, compare_base=False) == ["finetuned"]

    def test_plain_model_has_no_base(self):
        assert ev.model_labels(None, False, True) == ["model"]
        with pytest.raises(RunError, match="plain model"):
            ev.model_labels("base", False, True)


def _records(n: int) -> list[Record]:
    return [Record("t.jsonl", i + 1, "qa", prompt=f"What is item {i}?" + " please" * i,
                   response=f"Item {i} is thing number {i}, kept in box {i * 7}.") for i in range(n)]


def test_response_loss_equals_full_logits_computation(tiny_model_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.prepare.tokenization import IGNORE_INDEX, encode_record

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = [encode_record(r, tokenizer, TemplateConfig(), TokenizationConfig(), 512) for r in _records(5)]
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(e["labels"][1:])
            keep = labels != IGNORE_INDEX
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    # batches of 2 (padding exercised) and chunks of 3 tokens (chunking exercised)
    result = ev.response_loss(model, examples, tokenizer.pad_token_id, batch_size=2, chunk_tokens=3, progress=False)
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


@pytest.fixture
def trained_run(tmp_path, tiny_model_dir, monkeypatch):
    """A run folder as training leaves it: config, prepared splits, and a 'finetuned' full model."""
    from tunesmith.prepare.pipeline import prepare
    from tunesmith.runs import create_run

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": r.prompt, "answer": r.response}) + "\n" for r in _records(10)))
    config = load_config(base={
        "model": {"name": str(tiny_model_dir)}, "data": {"path": str(data)}, "split": {"test_size": 3},
        "training": {"method": "full", "precision": "fp32"}, "eval": {"max_new_tokens": 4, "bootstrap_samples": 50},
        "output": {"runs_dir": str(tmp_path / "runs"), "name": "r1"}})
    paths = create_run(config)
    prepare(paths, config.model, config.data, config.template, config.tokenization, config.split)
    shutil.copytree(tiny_model_dir, paths.model)
    (paths.model / "tunesmith.json").write_text(json.dumps(
        {"base_model": str(tiny_model_dir), "method": "full", "template": {"name": "auto"}}))
    return paths


def test_evaluate_run_writes_metrics_and_predictions(trained_run):
    from tunesmith import api

    result = api.evaluate_run(str(trained_run.root), model="base", progress=False)
    assert list(result["models"]) == ["base"]
    base = result["models"]["base"]
    assert result["n"] == 3 and base["n"] == 3 and base["loss_tokens"] > 0
    assert base["perplexity"] == pytest.approx(math.exp(base["loss"]))
    assert set(base["metrics"]) == set(METRICS) and set(base["errors"]) == set(ERROR_CATEGORIES)
    for stats in base["metrics"].values():
        assert stats["low"] <= stats["mean"] <= stats["high"]

    # A later finetuned-only eval of the same set keeps the base results next to it.
    api.evaluate_run(str(trained_run.root), model="finetuned", progress=False)
    saved = json.loads((trained_run.eval_dir / "metrics.json").read_text())
    assert set(saved["models"]) == {"base", "finetuned"}
    # same weights, so the same loss
    assert saved["models"]["finetuned"]["loss"] == pytest.approx(base["loss"], rel=1e-5)
    rows = [json.loads(line) for line in (trained_run.eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    test_records = [json.loads(line) for line in (trained_run.prepared / "test_records.jsonl").read_text().splitlines()]
    for row, record in zip(rows, test_records):
        assert row["reference"] == record["response"]
        assert record["prompt"] in row["prompt"] and row["prompt"].endswith("<|im_start|>assistant\n")
        for label in ("base", "finetuned"):
            assert set(row[label]) >= {"output", "finish_reason", "metrics", "errors"}
        assert row["base"]["output"] == row["finetuned"]["output"]
        # key-fact recall's key words: "Item 3 is thing number 3, kept in box 21." keeps the box; the words all
        # answers share and the item number the question asks about are no key facts
        box = record["response"].rsplit(" ", 1)[-1].rstrip(".")
        assert box in row["key_words"] and not {"item", "box", "kept"} & set(row["key_words"])
    assert "key words" in saved["key_fact_recall"]


def test_plain_model_needs_a_data_file(tiny_model_dir):
    with pytest.raises(RunError, match="--data"):
        ev.evaluate(str(tiny_model_dir), ["model"], EvalConfig())


def logits_shapes(monkeypatch, vocab_size: int) -> list:
    """Records the shape of every matrix product that yields logits (rows x vocabulary) from now on."""
    import torch

    shapes, matmul = [], torch.Tensor.__matmul__

    def recording(a, b):
        out = matmul(a, b)
        if out.shape[-1] == vocab_size:
            shapes.append(out.shape)
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", recording)
    return shapes


def test_response_loss_runs_the_head_on_answer_tokens_only_in_chunks(tiny_model_dir, tokenizer, capsys, monkeypatch):
    """The output head never sees prompt positions and at most `chunk_tokens` rows at once (no big logits)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.prepare.tokenization import IGNORE_INDEX, encode_record

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = [encode_record(r, tokenizer, TemplateConfig(), TokenizationConfig(), 512) for r in _records(6)]
    rows_seen = logits_shapes(monkeypatch, model.config.vocab_size)
    result = ev.response_loss(model, examples, tokenizer.pad_token_id, batch_size=4, chunk_tokens=8, progress=True)
    assert all(len(shape) == 2 and shape[0] <= 8 for shape in rows_seen)
    answer_tokens = sum(sum(label != IGNORE_INDEX for label in e["labels"][1:]) for e in examples)
    assert sum(shape[0] for shape in rows_seen) == answer_tokens == result["tokens"]
    assert "test loss" in capsys.readouterr().err  # the progress bar


def test_run_without_test_split_fails_before_loading_a_model(tmp_path):
    from tunesmith.runs import create_run

    paths = create_run(load_config(base={"output": {"runs_dir": str(tmp_path), "name": "bare"}}))
    with pytest.raises(RunError, match="no prepared test split"):
        ev.evaluate("no-such-model", ["finetuned"], EvalConfig(), paths=paths)


def test_loss_over_1000_examples_shows_progress_and_never_builds_full_logits(tiny_model_dir, capsys, monkeypatch):
    """Issue 4: a 1,000-example test set; logits exist only for <= chunk rows of answer tokens at a time."""
    import random

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rng = random.Random(0)
    examples = []
    for _ in range(1000):
        ids = [rng.randrange(3, 49152) for _ in range(rng.randrange(12, 40))]
        examples.append({"input_ids": ids, "labels": [-100] * (len(ids) - 6) + ids[-6:]})
    logits = logits_shapes(monkeypatch, model.config.vocab_size)
    result = ev.response_loss(model, examples, 2, batch_size=32, chunk_tokens=64, progress=True)
    assert result["tokens"] == 1000 * 6  # every answer token is predicted from the one before it
    assert sum(shape[0] for shape in logits) == 1000 * 6
    assert max(shape.numel() for shape in logits) <= 64 * 49152  # never a (batch x positions x vocabulary) tensor
    assert "1000/1000" in capsys.readouterr().err


def _qa_file(path, marked: bool):
    """Question/answer records; `marked` bakes the qa template into them, as some downloaded files do."""
    rows = [{"question": f"### Question:\nWhat is item {i}?\n\n### Answer:" if marked else f"What is item {i}?",
             "answer": ("### Answer: " if marked and i == 0 else "") + f"Item {i} is in box {i * 7}."}
            for i in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class TestStrippedForm:
    """A run whose training prompts lost a baked-in template has an eval file's records lose it too."""

    def eval_set(self, path, tokenizer, stripped_form):
        from tunesmith.config import DataConfig

        return ev.eval_set_from_file(path, DataConfig(), tokenizer, TemplateConfig(), TokenizationConfig(), 128,
                                     stripped_form=stripped_form)

    def test_marked_records_become_the_plain_ones(self, tmp_path, tokenizer):
        plain = self.eval_set(_qa_file(tmp_path / "plain.jsonl", False), tokenizer, None)
        stripped = self.eval_set(_qa_file(tmp_path / "marked.jsonl", True), tokenizer, "qa")
        assert [(r.prompt, r.response) for r in stripped.records] == [(r.prompt, r.response) for r in plain.records]
        assert stripped.examples == plain.examples

    def test_without_a_form_the_records_stay_as_written(self, tmp_path, tokenizer):
        kept = self.eval_set(_qa_file(tmp_path / "marked.jsonl", True), tokenizer, None)
        assert kept.records[0].prompt.startswith("### Question:") and kept.records[0].response.startswith("###")

    def test_eval_with_a_data_file_uses_the_runs_form(self, trained_run, tmp_path):
        info_file = trained_run.model / "tunesmith.json"
        info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "stripped_template": "qa"}))
        marked = _qa_file(tmp_path / "marked.jsonl", True)
        ev.evaluate(str(trained_run.root), ["finetuned"], EvalConfig(max_new_tokens=2, bootstrap_samples=10),
                    paths=trained_run, data=str(marked), precision="fp32", out_dir=tmp_path / "eval", progress=False)
        rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
        assert [row["reference"] for row in rows] == [f"Item {i} is in box {i * 7}." for i in range(4)]
        assert not any("### Question" in row["prompt"] for row in rows)


class TestKeyFactScoring:
    """Key-fact recall needs the whole reference set (what is distinctive) and each question (what is given)."""

    def test_question_of_is_everything_before_the_answer(self):
        from tunesmith.data import Message

        pair = Record("t.jsonl", 1, "qa", prompt="Price of the Wren?", input="the kettle", response="39 euros",
                      system="Be brief.")
        chat = Record("t.jsonl", 2, "chat", messages=(Message("user", "Hi"), Message("assistant", "Hello"),
                                                      Message("user", "Wren price?"), Message("assistant", "39")))
        assert ev.question_of(pair) == "Be brief.\nPrice of the Wren?\nthe kettle"
        assert ev.question_of(chat) == "Hi\nHello\nWren price?"

    def test_scores_use_the_key_words_of_the_set(self):
        from types import SimpleNamespace

        references = ["The Wren costs 39 euros. Bye.", "The Finch costs 45 euros. Bye.",
                      "The Heron costs 89 euros. Bye."]
        generations = [SimpleNamespace(text="The Wren costs 45 euros. Bye.", finish_reason="stop")] * 3
        keys = [{"39"}, {"45"}, {"89"}]
        scored = ev.score_generations(generations, references, keys)
        assert [s["metrics"]["key_fact_recall"] for s in scored] == [0.0, 100.0, 0.0]
        # by default the key words come from the references as a set: "wren" and "39" for the first
        by_default = ev.score_generations(generations, references)
        assert by_default[0]["metrics"]["key_fact_recall"] == 50.0
