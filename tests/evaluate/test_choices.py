"""Multiple-choice scoring: record shapes (flat, ARC native, Hugging Face ARC) and equality with
lm-evaluation-harness's own ARC task and HFLM log-likelihoods on the tiny model."""

from __future__ import annotations

import json

import pytest

from tunesmith.evaluate import run as ev
from tunesmith.errors import DataError

QUESTIONS = [
    ("What is two plus two?", ["3", "four", "twenty-two, or possibly five"], "B", ["A", "B", "C"]),
    ("Which colour is the sky on a clear day?", ["blue", "a rather dark shade of green"], "1", ["1", "2"]),
    ("Where do fish live?", ["in water", "on the moon", "in trees and mountains", "x"], "A", ["A", "B", "C", "D"]),
    ("What do bees make?", ["honey, mostly from flower nectar", "milk"], "A", ["A", "B"]),
]


def _hf_arc(q, choices, key, labels):
    """The shape of allenai/ai2_arc on the Hugging Face hub (what lm-evaluation-harness's arc task reads)."""
    return {"id": q[:8], "question": q, "choices": {"text": choices, "label": labels}, "answerKey": key}


def _native_arc(q, choices, key, labels):
    """The shape of ARC's original JSONL release."""
    return {"id": q[:8], "question": {"stem": q, "choices": [{"text": t, "label": l} for t, l in zip(choices, labels)]},
            "answerKey": key}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class TestParse:
    def test_native_hf_and_flat_shapes_agree(self):
        q, choices, key, labels = QUESTIONS[1]
        expected = ev.ChoiceItem(q, tuple(choices), 0)
        for data in (_native_arc(q, choices, key, labels), _hf_arc(q, choices, key, labels),
                     {"question": q, "choices": choices, "answer": 0},
                     {"question": q, "choices": choices, "answer": "blue"}):
            item = ev.parse_choice_item(data)
            assert (item.question, item.choices, item.answer) == (expected.question, expected.choices, 0)

    def test_letter_answer_for_plain_choices(self):
        assert ev.parse_choice_item({"question": "q", "choices": ["x", "y", "z"], "answer": "C"}).answer == 2

    @pytest.mark.parametrize("data, field", [
        ({"question": "q", "choices": ["x", "y"], "answer": 2}, "answer"),
        ({"question": "q", "choices": ["x", "y"], "answer": "nope"}, "answer"),
        ({"question": "q", "choices": ["only one"], "answer": 0}, "choices"),
        ({"question": "", "choices": ["x", "y"], "answer": 0}, "question"),
        ({"question": {"stem": "q", "choices": [{"text": "x", "label": "A"}, {"text": "y", "label": "B"}]},
          "answerKey": "E"}, "answerKey"),
    ])
    def test_bad_records_name_file_line_and_field(self, data, field):
        with pytest.raises(DataError) as info:
            ev.parse_choice_item(data, "mc.jsonl", 7)
        assert f"mc.jsonl:7: {field}:" in str(info.value)

    def test_file_lists_every_bad_line(self, tmp_path):
        path = _write(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": 0},
                                              {"question": "q", "choices": ["x"], "answer": 0},
                                              {"question": "q", "choices": ["x", "y"], "answer": 9}])
        with pytest.raises(DataError) as info:
            ev.load_choice_items(path)
        assert "mc.jsonl:2" in str(info.value) and "mc.jsonl:3" in str(info.value)


def test_acc_norm_divides_by_characters_of_the_choice():
    # lls -3 and -5; per character of the choice text (no leading space): -3/1 vs -5/10
    assert ev.choice_predictions([-3.0, -5.0], ["a", "abcdefghij"]) == (0, 1)
    # ties go to the first choice, as numpy's argmax does
    assert ev.choice_predictions([-2.0, -2.0], ["ab", "cd"]) == (0, 0)


@pytest.fixture(scope="module")
def harness(tiny_model_dir):
    """lm-evaluation-harness's HFLM around the tiny model in fp32."""
    lm_eval = pytest.importorskip("lm_eval.models.huggingface", reason="lm-eval (dev extra) is not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return lm_eval.HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), batch_size=4)


def _arc_task(data_file):
    """lm-evaluation-harness's own arc_easy task config, reading a local file instead of the hub."""
    from pathlib import Path

    import lm_eval
    import yaml
    from lm_eval.api.task import ConfigurableTask

    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/arc/arc_easy.yaml").read_text())
    for key in ("tag", "training_split", "validation_split", "dataset_name"):
        config.pop(key, None)
    config.update(dataset_path="json", test_split="test", dataset_kwargs={
        "data_files": {"test": str(data_file)}, "cache_dir": str(data_file.parent / "hf-datasets-cache")})
    return ConfigurableTask(config=config)


def test_encode_pair_matches_harness(harness, tokenizer):
    for context, continuation in [("Question: hi\nAnswer:", " yes"), ("Answer: ", "yes"), ("a  ", " b")]:
        assert ev.encode_pair(tokenizer, context, continuation) == tuple(harness._encode_pair(context, continuation))


def test_loglikelihoods_and_accuracy_match_lm_evaluation_harness(harness, tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith import api

    hf_file = _write(tmp_path / "arc_hf.jsonl", [_hf_arc(*q) for q in QUESTIONS])
    native_file = _write(tmp_path / "arc_native.jsonl", [_native_arc(*q) for q in QUESTIONS])
    task = _arc_task(hf_file)
    expected = []
    for doc in task.test_docs():
        requests = task.construct_requests(doc, task.doc_to_text(doc), metadata=("arc_easy", 0, 1))
        results = harness.loglikelihood(requests, disable_tqdm=True)
        expected.append(([ll for ll, _ in results], task.process_results(doc, results)))

    monkeypatch.setenv("TUNESMITH_FORCE_FP32", "1")
    result = api.evaluate_run(str(tiny_model_dir), mc=str(native_file), progress=False)
    ours = result["models"]["model"]
    assert ours["n"] == len(QUESTIONS)
    for item, (lls, metrics) in zip(ours["items"], expected):
        assert item["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert (item["acc"], item["acc_norm"]) == (metrics["acc"], metrics["acc_norm"])
    assert ours["acc"]["mean"] == pytest.approx(sum(m["acc"] for _, m in expected) / len(expected))
    assert ours["acc_norm"]["mean"] == pytest.approx(sum(m["acc_norm"] for _, m in expected) / len(expected))
    # the items are chosen so that length normalization changes at least one pick: acc_norm is really tested
    assert any(item["pred"] != item["pred_norm"] for item in ours["items"])
