"""Multiple-choice scoring by log-likelihood, exactly as lm-evaluation-harness scores ARC-style tasks.

Each choice is the continuation " " + text after the context "Question: {q}\nAnswer:" (zero-shot, no chat
template); acc picks the highest summed log-likelihood, acc_norm the highest per character of the choice.
The items come from `tunesmith.data.choices`.
"""

from __future__ import annotations

from typing import Sequence

from tunesmith.data.choices import ChoiceItem
from tunesmith.evaluate.metrics import summarize_metrics


def choice_context(question: str) -> str:
    """The prompt lm-evaluation-harness gives ARC-style tasks (no chat template, zero-shot)."""
    return f"Question: {question}\nAnswer:"


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split the way lm-evaluation-harness splits them.

    Trailing spaces of the context move to the continuation; the whole text is encoded once and the
    continuation is what follows the context's own encoding, so the continuation tokens are those the model
    would see in the full text.

    ("Answer: ", "yes") -> (ids of "Answer:", ids of " yes" as tokenized inside "Answer: yes")
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def choice_loglikelihoods(model, tokenizer, item: ChoiceItem) -> list[float]:
    """Summed log-probability of " " + each choice after the question's context.

    The context runs through the model once; its KV cache is repeated for the choices, which then run
    together as one right-padded batch, so a question costs two forward passes whatever its number of
    choices. When context + continuation exceed the model's context, the context loses tokens on the left
    (as lm-evaluation-harness does).
    """
    import torch

    from tunesmith.models import context_length

    pairs = [encode_pair(tokenizer, choice_context(item.question), " " + choice) for choice in item.choices]
    context_ids = pairs[0][0]
    continuations = [cont for _, cont in pairs]
    longest = max(len(c) for c in continuations)
    context_ids = context_ids[-max(1, context_length(model.config) + 1 - longest):]
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([context_ids], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        totals = [first[cont[0]].item() for cont in continuations]
        rest = [i for i, cont in enumerate(continuations) if len(cont) > 1]
        if rest:
            width = max(len(continuations[i]) - 1 for i in rest)
            ids = torch.zeros((len(rest), width), dtype=torch.long)  # padding is masked out
            mask = torch.zeros((len(rest), len(context_ids) + width), dtype=torch.long)
            mask[:, :len(context_ids)] = 1
            for row, i in enumerate(rest):
                feed = continuations[i][:-1]
                ids[row, :len(feed)] = torch.tensor(feed)
                mask[row, len(context_ids):len(context_ids) + len(feed)] = 1
            cache = out.cache
            cache.batch_repeat_interleave(len(rest))
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), cache=cache,
                           use_cache=True).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(rest):
                targets = torch.tensor(continuations[i][1:], device=device)
                totals[i] += logprobs[row, :len(targets)].gather(-1, targets[:, None]).sum().item()
    return totals


def choice_predictions(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(acc pick, acc_norm pick): the highest log-likelihood, and the highest log-likelihood per character of
    the choice text (without the leading space), first index winning ties, as lm-evaluation-harness does.

    >>> choice_predictions([-4.0, -6.0], ["no", "yes, sure"])  # -2.0/char vs -0.67/char
    (0, 1)
    """
    import numpy as np

    lls = np.asarray(loglikelihoods, dtype=float)
    lengths = np.asarray([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def score_choices(model, tokenizer, items: Sequence[ChoiceItem], samples: int = 1000, seed: int = 0,
                  progress: bool = True) -> dict:
    """acc and acc_norm (fractions 0-1, as lm-evaluation-harness reports them) with bootstrap intervals,
    and every item's per-choice log-likelihoods."""
    from tqdm.auto import tqdm

    scored = []
    for item in tqdm(items, desc="multiple choice", unit="q", disable=not progress):
        lls = choice_loglikelihoods(model, tokenizer, item)
        pick, pick_norm = choice_predictions(lls, item.choices)
        scored.append({"where": item.where, "loglikelihoods": lls, "answer": item.answer, "pred": pick,
                       "pred_norm": pick_norm, "acc": float(pick == item.answer),
                       "acc_norm": float(pick_norm == item.answer)})
    summary = summarize_metrics([{"acc": s["acc"], "acc_norm": s["acc_norm"]} for s in scored], samples, seed)
    return {"n": len(scored), **summary, "items": scored}
