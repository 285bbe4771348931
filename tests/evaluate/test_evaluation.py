"""Evaluation: metric functions on hand-worked examples, bootstrap intervals, error categories, the chunked
response loss against a direct full-logits computation, and a whole eval of a hand-built run folder."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tunesmith.evaluate import run as ev
from tunesmith.config import EvalConfig, TemplateConfig, TokenizationConfig, load_config
from tunesmith.data import Record
from tunesmith.errors import RunError


class TestNormalization:
    @pytest.mark.parametrize("text, expected", [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple,\tA pear.\n", "apple pear"),
        ("Theory of a thing", "theory of thing"),  # only whole-word articles go
        ("", ""),
    ])
    def test_squad_normalization(self, text, expected):
        assert ev.normalize_answer(text) == expected

    def test_exact_match_raw_only_ignores_surrounding_whitespace(self):
        assert ev.exact_match("  Paris\n", "Paris") == 100.0
        assert ev.exact_match("paris", "Paris") == 0.0
        assert ev.exact_match("Paris.", "Paris") == 0.0

    def test_exact_match_normalized_ignores_case_punctuation_articles(self):
        assert ev.exact_match("the  PARIS.", "Paris", normalized=True) == 100.0
        assert ev.exact_match("Lyon", "Paris", normalized=True) == 0.0


class TestTokenF1:
    def test_hand_worked(self):
        # pred "the cat sat on a mat" -> [cat, sat, on, mat]; ref "A cat sat." -> [cat, sat]
        # shared 2: precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
        assert ev.token_f1("the cat sat on a mat", "A cat sat.") == pytest.approx(200 / 3)

    def test_counts_repeated_words_once_per_occurrence(self):
        # pred [red, red, red], ref [red, blue]: shared min(3,1)=1 -> P 1/3, R 1/2, F1 = 0.4
        assert ev.token_f1("red red red", "red blue") == pytest.approx(40.0)

    @pytest.mark.parametrize("pred, ref, expected", [("", "", 100.0), ("", "x", 0.0), ("x", "", 0.0),
                                                     ("a b", "c d", 0.0)])
    def test_edge_cases(self, pred, ref, expected):
        assert ev.token_f1(pred, ref) == expected


class TestRougeL:
    def test_hand_worked(self):
        # LCS of [the, cat, sat, on, the, mat] and [the, cat, is, on, the, mat] is 5 words: P = R = 5/6
        assert ev.rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(500 / 6)

    def test_order_matters(self):
        # LCS of [a, b, c, d] and [d, c, b, a] is 1 word: P = R = 1/4
        assert ev.rouge_l("a b c d", "d c b a") == pytest.approx(25.0)

    def test_non_ascii_words_count(self):
        assert ev.rouge_l("Größe überall", "größe überall") == pytest.approx(100.0)


class TestBleuChrf:
    def test_identical_and_disjoint(self):
        text = "the quick brown fox jumps over the lazy dog"
        assert ev.sentence_bleu(text, text) == pytest.approx(100.0)
        assert ev.sentence_chrf(text, text) == pytest.approx(100.0)
        assert ev.sentence_bleu("zzz qqq", text) < 1.0

    def test_example_metrics_has_every_metric(self):
        assert set(ev.example_metrics("a", "a")) == set(ev.METRICS)

    def test_corpus_bleu_pools_counts(self):
        hyps, refs = ["the cat sat on the mat", "a dog ran"], ["the cat sat on the mat", "a dog ran"]
        assert ev.corpus_scores(hyps, refs)["bleu"] == pytest.approx(100.0)


class TestBootstrap:
    values = [0.0, 10.0, 20.0, 90.0, 100.0, 35.0, 50.0, 5.0]

    def test_contains_the_mean_and_is_deterministic(self):
        mean = sum(self.values) / len(self.values)
        low, high = ev.bootstrap_interval(self.values, samples=500, seed=3)
        assert low < mean < high
        assert (low, high) == ev.bootstrap_interval(self.values, samples=500, seed=3)
        assert (low, high) != ev.bootstrap_interval(self.values, samples=500, seed=4)

    def test_more_data_gives_a_narrower_interval(self):
        low1, high1 = ev.bootstrap_interval(self.values, seed=0)
        low2, high2 = ev.bootstrap_interval(self.values * 20, seed=0)
        assert high2 - low2 < high1 - low1

    def test_summary(self):
        summary = ev.summarize_metrics([{"rouge_l": v} for v in self.values], samples=200, seed=0)
        assert summary["rouge_l"]["mean"] == pytest.approx(38.75)
        assert summary["rouge_l"]["low"] < 38.75 < summary["rouge_l"]["high"]


class TestErrorCategories:
    def test_repetition_share(self):
        # 4-gram "we will go now" occurs twice: all 8 words are covered
        assert ev.repetition_share("we will go now we will go now") == 1.0
        assert ev.repetition_share("The capital of France is Paris, a city on the Seine.") == 0.0

    def test_looping_answer_is_repetitive_but_a_repeated_phrase_is_not(self):
        assert ev.is_repetitive("I am a bot. " * 6)
        assert not ev.is_repetitive("Press the red button, then wait. If the light stays on, press the red "
                                    "button again and call support at any time of day or night.")

    def test_flags_and_shares(self):
        flags = [ev.error_flags("", "stop"), ev.error_flags("ok", "length"), ev.error_flags("ok", "stop"),
                 ev.error_flags("la la la la la la la", "length")]
        assert flags[0] == {"empty": True, "length": False, "repetitive": False}
        assert ev.error_shares(flags) == {"empty": 0.25, "length": 0.5, "repetitive": 0.25}


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

    monkeypatch.setenv("TUNESMITH_FORCE_FP32", "1")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": r.prompt, "answer": r.response}) + "\n" for r in _records(10)))
    config = load_config(base={
        "model": {"name": str(tiny_model_dir)}, "data": {"path": str(data)}, "split": {"test_size": 3},
        "training": {"method": "full"}, "eval": {"max_new_tokens": 4, "bootstrap_samples": 50},
        "output": {"runs_dir": str(tmp_path / "runs"), "name": "r1"}})
    paths = create_run(config)
    prepare(config)
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
    assert set(base["metrics"]) == set(ev.METRICS) and set(base["errors"]) == set(ev.ERROR_CATEGORIES)
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
