"""Multiple-choice scoring: acc_norm's length normalization, and equality with lm-evaluation-harness's own ARC
task and HFLM log-likelihoods on the tiny model, read from both ARC shapes (record parsing itself is tested in
tests/data/test_choice_records.py)."""

from __future__ import annotations


import pytest

from tunesmith.evaluate import choices as ev

from mc_files import hf_arc, native_arc, write_jsonl

QUESTIONS = [
    ("What is two plus two?", ["3", "four", "twenty-two, or possibly five"], "B", ["A", "B", "C"]),
    ("Which colour is the sky on a clear day?", ["blue", "a rather dark shade of green"], "1", ["1", "2"]),
    ("Where do fish live?", ["in water", "on the moon", "in trees and mountains", "x"], "A", ["A", "B", "C", "D"]),
    ("What do bees make?", ["honey, mostly from flower nectar", "milk"], "A", ["A", "B"]),
]


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


# (log-likelihoods, choices) where dividing by characters picks differently from dividing by characters + the
# leading space, by UTF-8 bytes, or by tokens, so only lm-evaluation-harness's own rule gives its acc_norm
NORMALIZATION_CASES = [
    ([-2.0, -4.1], ["a", "abc"]),                       # per char -2.0 vs -1.37; with the space -1.0 vs -1.03
    ([-3.0, -4.0], ["éé", "abc"]),                      # per char -1.5 vs -1.33; per byte -0.75 vs -1.33
    ([-9.0, -6.0], ["photosynthesis", "a cat"]),        # per char -0.64 vs -1.2; per token (1 vs 2) -9 vs -3
    ([-5.0, -5.2, -30.0], ["xy", "xyz", "a rather long third choice"]),
]


@pytest.fixture(scope="module")
def normalization_docs(tmp_path_factory):
    """lm-evaluation-harness's arc_easy task over one question per case (answer B), and its docs."""
    pytest.importorskip("lm_eval", reason="lm-eval (dev extra) is not installed")
    rows = [hf_arc(f"q{i}?", texts, "B", [chr(65 + j) for j in range(len(texts))])
            for i, (_, texts) in enumerate(NORMALIZATION_CASES)]
    task = _arc_task(write_jsonl(tmp_path_factory.mktemp("norm") / "cases.jsonl", rows))
    return task, list(task.test_docs())


@pytest.mark.parametrize("case", range(len(NORMALIZATION_CASES)))
def test_acc_norm_rule_is_lm_evaluation_harness_s(normalization_docs, case):
    """Its ARC task's process_results decides acc and acc_norm from the same log-likelihoods as we do."""
    task, docs = normalization_docs
    lls, texts = NORMALIZATION_CASES[case]
    metrics = task.process_results(docs[case], [(ll, False) for ll in lls])
    pick, pick_norm = ev.choice_predictions(lls, texts)
    assert (float(pick == 1), float(pick_norm == 1)) == (metrics["acc"], metrics["acc_norm"])


def test_normalization_cases_tell_the_rules_apart(tokenizer):
    """Each case above has at least one other plausible rule pick differently, so the test pins the rule."""
    import numpy as np

    rules = {"chars + space": lambda t: len(t) + 1, "bytes": lambda t: len(t.encode()),
             "tokens": lambda t: len(tokenizer.encode(" " + t))}
    for lls, texts in NORMALIZATION_CASES:
        ours = ev.choice_predictions(lls, texts)[1]
        others = {name: int(np.argmax(np.asarray(lls) / [rule(t) for t in texts])) for name, rule in rules.items()}
        assert any(pick != ours for pick in others.values()), (texts, others)


def test_encode_pair_matches_harness(harness, tokenizer):
    for context, continuation in [("Question: hi\nAnswer:", " yes"), ("Answer: ", "yes"), ("a  ", " b")]:
        assert ev.encode_pair(tokenizer, context, continuation) == tuple(harness._encode_pair(context, continuation))


def test_loglikelihoods_and_accuracy_match_lm_evaluation_harness(harness, tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith import api

    hf_file = write_jsonl(tmp_path / "arc_hf.jsonl", [hf_arc(*q) for q in QUESTIONS])
    native_file = write_jsonl(tmp_path / "arc_native.jsonl", [native_arc(*q) for q in QUESTIONS])
    task = _arc_task(hf_file)
    expected = []
    for doc in task.test_docs():
        requests = task.construct_requests(doc, task.doc_to_text(doc), metadata=("arc_easy", 0, 1))
        results = harness.loglikelihood(requests, disable_tqdm=True)
        expected.append(([ll for ll, _ in results], task.process_results(doc, results)))

    result = api.evaluate_run(str(tiny_model_dir), mc=str(native_file), precision="fp32", progress=False)
    ours = result["models"]["model"]
    assert ours["n"] == len(QUESTIONS)
    for item, (lls, metrics) in zip(ours["items"], expected):
        assert item["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert (item["acc"], item["acc_norm"]) == (metrics["acc"], metrics["acc_norm"])
    assert ours["acc"]["mean"] == pytest.approx(sum(m["acc"] for _, m in expected) / len(expected))
    assert ours["acc_norm"]["mean"] == pytest.approx(sum(m["acc_norm"] for _, m in expected) / len(expected))
    # the items are chosen so that length normalization changes at least one pick: acc_norm is really tested
    assert any(item["pred"] != item["pred_norm"] for item in ours["items"])
