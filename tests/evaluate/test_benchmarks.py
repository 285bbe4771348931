"""Forgetting next to learning: `eval.benchmarks` scored for base and finetuned in one eval, written as
`eval/mc-<stem>.json` with the change, and the multiple-choice file the demo ships."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mc_files import write_jsonl
from test_run import trained_run  # noqa: F401  (the fixture: a run folder with a prepared test split)

from tunesmith.config import load_config
from tunesmith.data.choices import load_choice_items
from tunesmith.errors import DataError

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "general_knowledge_mc.jsonl"
QUESTIONS = [{"question": "What do bees make?", "choices": ["honey", "milk", "silk"], "answer": 0},
             {"question": "How many days are in a week?", "choices": ["five", "seven"], "answer": 1},
             {"question": "What is frozen water called?", "choices": ["steam", "ice", "smoke"], "answer": "B"}]


def test_benchmarks_are_scored_for_both_models_beside_the_test_set(trained_run, tmp_path):  # noqa: F811
    from tunesmith import api

    bench = write_jsonl(tmp_path / "common.jsonl", QUESTIONS)
    result = api.evaluate_run(str(trained_run.root), benchmarks=[str(bench)], progress=False)
    assert set(result["models"]) == {"base", "finetuned"}  # the test-set evaluation is all there too
    [kept] = result["benchmarks"]
    assert kept["source"] == str(bench) and kept["n"] == 3 and set(kept["models"]) == {"base", "finetuned"}
    assert "items" not in kept["models"]["base"]  # the summary leaves the per-question scores to the file
    saved = json.loads((trained_run.eval_dir / "mc-common.json").read_text())
    base, tuned = saved["models"]["base"], saved["models"]["finetuned"]
    assert len(base["items"]) == 3 and base["acc"]["mean"] in (0.0, 1 / 3, 2 / 3, 1.0)
    # the fixture's finetuned weights are the base weights: nothing forgotten, and the paired interval says so
    assert tuned["acc"] == base["acc"] and saved["change"]["acc"] == {"mean": 0.0, "low": 0.0, "high": 0.0}



def _scores(*accs: float) -> dict:
    items = [{"acc": a, "acc_norm": a} for a in accs]
    mean = sum(accs) / len(accs)
    return {"acc": {"mean": mean}, "acc_norm": {"mean": mean}, "items": items}


def test_a_later_eval_of_one_model_keeps_the_others_scores_and_the_change(tmp_path):
    from tunesmith.evaluate.run import choices_content, write_choices

    out = tmp_path / "mc-common.json"
    write_choices(out, choices_content("run", "common.jsonl", 4, {"base": _scores(1, 1, 1, 0)}))
    written = write_choices(out, choices_content("run", "common.jsonl", 4, {"finetuned": _scores(1, 0, 0, 0)}))
    assert set(written["models"]) == {"base", "finetuned"} and json.loads(out.read_text()) == written
    assert written["change"]["acc"]["mean"] == -0.5  # paired: the same four questions, finetuned - base
    assert written["change"]["acc"]["low"] <= -0.5 <= written["change"]["acc"]["high"]
    # another file of the same name (other questions) replaces the old scores instead of standing beside them
    other = write_choices(out, choices_content("run", "common.jsonl", 2, {"finetuned": _scores(1, 1)}))
    assert set(other["models"]) == {"finetuned"} and "change" not in other


def test_a_bad_benchmark_fails_before_any_model_loads(trained_run, tmp_path, monkeypatch):  # noqa: F811
    from tunesmith import api
    from tunesmith.use import generation

    monkeypatch.setattr(generation, "load_for_inference", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Which?", "choices": ["a"], "answer": 0}])
    with pytest.raises(DataError, match="bad.jsonl:1"):
        api.evaluate_run(str(trained_run.root), benchmarks=[str(bad)], progress=False)
    assert not (trained_run.eval_dir / "metrics.json").exists()


def test_benchmark_paths_in_a_config_file_are_read_beside_it(tmp_path):
    (tmp_path / "mine.jsonl").write_text("")
    (tmp_path / "run.yaml").write_text("eval:\n  benchmarks: [mine.jsonl, /abs/other.jsonl, missing.jsonl]\n")
    config = load_config(tmp_path / "run.yaml")
    assert config.eval.benchmarks == [str(tmp_path / "mine.jsonl"), "/abs/other.jsonl", "missing.jsonl"]


def test_the_shipped_benchmark_is_a_fair_four_choice_test():
    items = load_choice_items(SHIPPED)
    assert 40 <= len(items) <= 60 and len({i.question for i in items}) == len(items)
    assert all(len(i.choices) == 4 and len(set(i.choices)) == 4 for i in items)
    # the right answer is not always in the same place (a model that always picks one letter stays near 25%)
    assert max(Counter(i.answer for i in items).values()) / len(items) < 0.4
    demo = load_config(SHIPPED.parent / "demo.yaml")
    assert demo.eval.benchmarks == [str(SHIPPED)]


@pytest.mark.parametrize("asked, scored", [("auto", "fp32"), ("bf16", "bf16")])
def test_eval_mc_scores_in_fp32_unless_told_otherwise_as_lm_eval_does(tmp_path, monkeypatch, asked, scored):
    from tunesmith.config import EvalConfig
    from tunesmith.evaluate import run

    seen = []

    class Stop(Exception):
        pass

    def fake_load(target, which, precision="auto", device=None):
        seen.append(precision)
        raise Stop

    monkeypatch.setattr("tunesmith.use.generation.load_for_inference", fake_load)
    path = write_jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    with pytest.raises(Stop):
        run.evaluate_choices("some-model", ["model"], str(path), EvalConfig(), precision=asked, progress=False)
    assert seen == [scored]
