"""Batched multiple-choice scoring: packing many questions (and each question's choices after one shared context)
into one forward pass gives every question the log-likelihoods of scoring each choice alone, as
lm-evaluation-harness does, whatever the batch size, the padding, or a context cut to fit the model's window."""

from __future__ import annotations

import pytest

from tunesmith.data.choices import ChoiceItem
from tunesmith.evaluate import choices as ev

ITEMS = [
    ChoiceItem("What is two plus two?", ("3", "four", "twenty-two, or possibly five"), 1),
    ChoiceItem("Sky?", ("blue", "a rather dark shade of green that nobody has ever seen before"), 0),
    ChoiceItem("Where do fish live, most of the time, when nobody is fishing for them?",
               ("in water", "on the moon", "in trees and mountains", "x", "under a very large rock"), 0),
    ChoiceItem("What do bees make?", ("honey, mostly from flower nectar", "milk"), 0),
    ChoiceItem("Pick one.", ("a", "b", "c"), 2),
]


@pytest.fixture(scope="module")
def model(varied_model_dir):
    """The tiny model with large random weights: log-likelihoods spread widely, so picks differ by question."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32).eval()


def alone(model, context: list[int], continuation: list[int], max_positions: int | None = None) -> float:
    """One (context, continuation) request scored alone, in one plain forward pass, the way lm-evaluation-harness
    does it: the last max_positions + 1 tokens of context + continuation, minus the last, go in."""
    import torch

    tokens = context + continuation
    if max_positions is not None:
        tokens = tokens[-(max_positions + 1):]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokens[:-1]])).logits[0, -len(continuation):]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum().item()


def reference(model, tokenizer, items, max_positions=None) -> list[list[float]]:
    result = []
    for item in items:
        context, continuations = ev.encode_item(tokenizer, item)
        result.append([alone(model, context, cont, max_positions) for cont in continuations])
    return result


@pytest.fixture(scope="module")
def expected(model, tokenizer):
    return reference(model, tokenizer, ITEMS)


@pytest.mark.parametrize("batch_tokens", [1, 64, 100_000])  # one question per pass, some, all at once
def test_batched_loglikelihoods_equal_each_request_scored_alone(model, tokenizer, expected, batch_tokens):
    got = ev.batch_loglikelihoods(model, tokenizer, ITEMS, batch_tokens=batch_tokens)
    for lls, want, item in zip(got, expected, ITEMS):
        assert lls == pytest.approx(want, abs=1e-4)
        assert ev.choice_predictions(lls, item.choices) == ev.choice_predictions(want, item.choices)


def test_batch_tokens_64_puts_questions_of_different_lengths_together(tokenizer):
    # so the 64-token case above runs padded batches of several questions
    rows = [row for index, item in enumerate(ITEMS) for row in ev.plan_rows(index, *ev.encode_item(tokenizer, item),
                                                                               2048)]
    batches = ev.batch_rows(rows, 64)
    assert any(len({row.length for row in batch}) > 1 for batch in batches)
    assert sorted(row.owners for batch in batches for row in batch) == sorted(row.owners for row in rows)


def test_a_context_too_long_for_the_window_is_cut_per_choice_as_lm_eval_does(model, tokenizer):
    # the window holds 16 positions: each choice's request loses a different number of context tokens
    item = ChoiceItem("Which of these words is the longest one, if you count every letter in it carefully?",
                      ("a", "an extraordinarily long answer indeed"), 1)
    context, continuations = ev.encode_item(tokenizer, item)
    assert len(context) + len(continuations[1]) > 17 and len(context) + len(continuations[0]) > 17
    original = model.config.max_position_embeddings
    model.config.max_position_embeddings = 16
    try:
        got = ev.batch_loglikelihoods(model, tokenizer, [item, ITEMS[0]], batch_tokens=1000)
    finally:
        model.config.max_position_embeddings = original
    expected = reference(model, tokenizer, [item, ITEMS[0]], max_positions=16)
    assert [pytest.approx(lls, abs=1e-4) for lls in expected] == got


def test_one_question_scores_as_in_the_batch(model, tokenizer, expected):
    assert [ev.choice_loglikelihoods(model, tokenizer, item) for item in ITEMS] == [
        pytest.approx(lls, abs=1e-4) for lls in expected]
