"""bench/make_manual_qa.py, the documentation-style set of issue 17's second acceptance: the same file every time,
every fact asked in several phrasings (so held-out questions are other phrasings of taught facts), answers from
one sentence to a paragraph, and no closing line shared by the answers that ROUGE-L would reward."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench_module(name: str):
    """A bench script as a module (bench/ is not a package); registered, as dataclasses need."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manual():
    return load_bench_module("make_manual_qa")


@pytest.fixture(scope="module")
def records(manual):
    return manual.build_records()


def test_the_same_seed_writes_the_same_file_and_another_seed_another(manual, tmp_path):
    first, again, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    manual.write_set(first)
    manual.write_set(again)
    manual.write_set(other, seed=manual.SEED + 1)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert {tuple(json.loads(line)) for line in first.read_text(encoding="utf-8").splitlines()} == {
        ("question", "answer")}


def test_every_fact_is_asked_in_two_to_four_distinct_phrasings(records):
    phrasings = defaultdict(set)
    for record in records:
        phrasings[record["fact"]].add(record["question"])
    assert 300 <= len(records) <= 500
    assert min(len(q) for q in phrasings.values()) >= 2 and max(len(q) for q in phrasings.values()) <= 4
    # a question names one fact, and one answer belongs to one fact: matching by answer finds the fact
    assert len({r["question"] for r in records}) == len(records)
    assert len({r["answer"] for r in records}) == len(phrasings)


def test_answers_run_from_one_sentence_to_a_paragraph(manual):
    lengths = sorted(len(fact.answer.split()) for fact in manual.build_facts())
    assert lengths[0] <= 10 and lengths[-1] >= 100 and lengths[-1] / lengths[0] >= 5
    assert sum(n >= 50 for n in lengths) >= 20 and sum(n <= 15 for n in lengths) >= 20


def test_no_closing_sentence_or_opening_is_boilerplate(manual):
    answers = [fact.answer for fact in manual.build_facts()]
    last = Counter(re.split(r"(?<=[.!?])\s+", answer.strip())[-1] for answer in answers)
    opening = Counter(" ".join(answer.split()[:4]) for answer in answers)
    assert last.most_common(1)[0][1] == 1
    assert opening.most_common(1)[0][1] <= 0.05 * len(answers)


def test_the_checks_split_holds_out_no_fact_whole(tmp_path, monkeypatch):
    check = load_bench_module("manual_qa_check")
    data = tmp_path / "manual_qa.jsonl"
    check.write_set(data)
    assert check.split_problems(check.write_config(tmp_path, data, tmp_path / "runs", "x")) == []
    # the check itself finds a fact held out whole: split seed 0 holds out every phrasing of verify.after_push
    monkeypatch.setattr(check, "SPLIT_SEED", 0)
    problems = check.split_problems(check.write_config(tmp_path, data, tmp_path / "runs", "y"))
    assert problems and all(p.startswith("held out whole") and "verify.after_push" in p for p in problems)


def test_the_verdict_needs_both_metrics_doubled():
    check = load_bench_module("manual_qa_check")
    base = {"key_fact_recall": 10.0, "rouge_l": 20.0}
    assert check.verdict(base, {"key_fact_recall": 20.0, "rouge_l": 40.0}) == []
    [failure] = check.verdict(base, {"key_fact_recall": 35.0, "rouge_l": 39.9})
    assert failure.startswith("ROUGE-L: 39.9")
