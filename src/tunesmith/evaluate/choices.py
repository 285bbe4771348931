"""Multiple-choice scoring by log-likelihood, exactly as lm-evaluation-harness scores ARC-style tasks.

Each choice is the continuation " " + text after the context "Question: {q}\nAnswer:" (zero-shot, no chat
template); acc picks the highest summed log-likelihood, acc_norm the highest per character of the choice
text (not counting the leading space, as lm-evaluation-harness's `process_results` counts). The items come from
`tunesmith.data.choices`.

lm-evaluation-harness runs every (context, choice) request through the model whole, the context once per
choice, with logits and a log-softmax over the vocabulary at every position. Here a question is one packed row
(its context once, then its choices, each seeing only the context and itself), many questions go into one
padded forward pass, and logits are computed only where a choice token is predicted. The log-likelihoods are
the same to float rounding (about 1e-5 in fp32), so acc and acc_norm are lm-evaluation-harness's; in bf16 both
tools' numbers move by far more than that, which is why a comparison with it runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class ScoringRow:
    """One packed model input: a context and continuations that share it (the choices of one question).

    The row is laid out as context, then every continuation but its last token; each continuation attends to
    the context and to itself only, so one forward pass scores all the choices as if each had followed the
    context alone. `owners[i]` is the (question, choice) continuation `i` belongs to.
    """

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    owners: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)


def encode_item(tokenizer, item: ChoiceItem) -> tuple[list[int], list[list[int]]]:
    """(context ids, one continuation's ids per choice): the requests lm-evaluation-harness makes for an item."""
    pairs = [encode_pair(tokenizer, choice_context(item.question), " " + choice) for choice in item.choices]
    return pairs[0][0], [cont for _, cont in pairs]


def plan_rows(index: int, context: Sequence[int], continuations: Sequence[Sequence[int]],
              max_positions: int) -> list[ScoringRow]:
    """The rows that score question `index`: one row for all choices when they fit the model's window.

    When context + a continuation exceed it, lm-evaluation-harness cuts that request's context on the left
    just enough for that continuation; each choice then gets its own row, cut the same way, so the
    numbers stay lm-evaluation-harness's.

    >>> [r.length for r in plan_rows(0, [1, 2, 3], [[4, 5], [6]], 8)]
    [4]
    >>> [(r.context, r.continuations) for r in plan_rows(0, [1, 2, 3], [[4, 5], [6]], 3)]
    [((2, 3), ((4, 5),)), ((1, 2, 3), ((6,),))]
    """
    conts = [tuple(c) for c in continuations]
    if len(context) + max(len(c) for c in conts) <= max_positions + 1:
        return [ScoringRow(tuple(context), tuple(conts), tuple((index, i) for i in range(len(conts))))]
    return [ScoringRow(tuple(context[-max(1, max_positions + 1 - len(c)):]), (c,), ((index, i),))
            for i, c in enumerate(conts)]


def row_layout(row: ScoringRow) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """(input ids, position ids, segment of each position, where each continuation's token is predicted).

    Segment 0 is the context, segment i + 1 continuation i; a continuation's first token is predicted at the
    context's last position, each later token at its predecessor's position.

    >>> row_layout(ScoringRow((1, 2), ((3, 4), (5,)), ((0, 0), (0, 1))))
    ([1, 2, 3], [0, 1, 2], [0, 0, 1], [[1, 2], [1]])
    """
    ids, positions, segments = list(row.context), list(range(len(row.context))), [0] * len(row.context)
    predicted_at = []
    for number, cont in enumerate(row.continuations, start=1):
        start = len(ids)
        ids.extend(cont[:-1])
        positions.extend(range(len(row.context), len(row.context) + len(cont) - 1))
        segments.extend([number] * (len(cont) - 1))
        predicted_at.append([len(row.context) - 1] + list(range(start, start + len(cont) - 1)))
    return ids, positions, segments, predicted_at


def attention_bias(segments, dtype):
    """Additive attention mask (batch, 1, L, L) for rows of segment ids, -1 marking padding.

    A position sees earlier positions of the context and of its own segment; padding sees only itself, so
    no row of the softmax is empty (an empty row gives NaN, which would leak through the masked weights).
    """
    import torch

    seg = torch.as_tensor(segments)
    length = seg.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
    allowed = causal & same & (seg[:, None, :] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool)
    bias = torch.zeros(allowed.shape, dtype=dtype)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return bias[:, None]


def takes_logits_to_keep(model) -> bool:
    """Whether the model can compute logits at chosen positions only (transformers' causal LMs can)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def score_rows(model, rows: Sequence[ScoringRow]) -> list[float]:
    """Summed log-probability of every continuation of `rows`, all rows in one right-padded forward pass.

    The model computes logits only from the first position any continuation is predicted at (the context
    before it needs none), and the log-softmax runs in fp32.
    """
    import torch

    layouts = [row_layout(row) for row in rows]
    width = max(len(ids) for ids, *_ in layouts)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, (row_ids, row_positions, row_segments, _) in enumerate(layouts):
        ids[r, :len(row_ids)] = torch.tensor(row_ids)
        positions[r, :len(row_ids)] = torch.tensor(row_positions)
        segments[r, :len(row_ids)] = torch.tensor(row_segments)
    first = min(len(row.context) for row in rows) - 1
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    keep = {"logits_to_keep": torch.arange(first, width, device=device)} if takes_logits_to_keep(model) else {}
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), position_ids=positions.to(device),
                       attention_mask=attention_bias(segments, dtype).to(device), use_cache=False, **keep).logits
        logits = logits if keep else logits[:, first:]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        totals = []
        for r, (row, (*_, predicted_at)) in enumerate(zip(rows, layouts)):
            for cont, at in zip(row.continuations, predicted_at):
                where = torch.tensor(at, device=device) - first
                targets = torch.tensor(cont, device=device)
                totals.append(logprobs[r, where].gather(-1, targets[:, None]).sum().item())
    return totals


def batch_rows(rows: Sequence[ScoringRow], batch_tokens: int) -> list[list[ScoringRow]]:
    """Rows longest first (as lm-evaluation-harness orders its requests), cut into batches whose padded size
    (rows x longest) stays within `batch_tokens`; neighbours in length pad little.

    >>> [[r.length for r in b] for b in batch_rows([ScoringRow((1,) * n, ((2,),), ((0, 0),)) for n in (2, 5, 3)], 6)]
    [[5], [3, 2]]
    """
    ordered = sorted(rows, key=lambda r: -r.length)
    batches: list[list[ScoringRow]] = []
    for row in ordered:
        if batches and (len(batches[-1]) + 1) * batches[-1][0].length <= batch_tokens:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def batch_loglikelihoods(model, tokenizer, items: Sequence[ChoiceItem], batch_tokens: int = 1024,
                         progress: bool = False) -> list[list[float]]:
    """Every item's per-choice summed log-likelihoods, many questions per forward pass.

    Each question is one packed row (its context once, its choices after it, see `ScoringRow`); rows are
    sorted by length and batched up to `batch_tokens` padded positions. The numbers are those of scoring each
    (context, " " + choice) alone, as lm-evaluation-harness does, to float rounding.
    """
    from tqdm.auto import tqdm

    from tunesmith.models import context_length

    max_positions = context_length(model.config)
    rows = [row for index, item in enumerate(items)
            for row in plan_rows(index, *encode_item(tokenizer, item), max_positions)]
    results = [[0.0] * len(item.choices) for item in items]
    unscored = [len(item.choices) for item in items]  # a question is done when all its choices are
    with tqdm(total=len(items), desc="multiple choice", unit="q", disable=not progress) as bar:
        for batch in batch_rows(rows, batch_tokens):
            owners = [owner for row in batch for owner in row.owners]
            for (index, choice), total in zip(owners, score_rows(model, batch)):
                results[index][choice] = total
                unscored[index] -= 1
                bar.update(unscored[index] == 0)
    return results


def choice_loglikelihoods(model, tokenizer, item: ChoiceItem) -> list[float]:
    """Summed log-probability of " " + each choice after the question's context (one question's
    `batch_loglikelihoods`)."""
    return batch_loglikelihoods(model, tokenizer, [item])[0]


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
                  progress: bool = True, batch_tokens: int = 1024) -> dict:
    """acc and acc_norm (fractions 0-1, as lm-evaluation-harness reports them) with bootstrap intervals,
    and every item's per-choice log-likelihoods."""
    scored = []
    for item, lls in zip(items, batch_loglikelihoods(model, tokenizer, items, batch_tokens, progress)):
        pick, pick_norm = choice_predictions(lls, item.choices)
        scored.append({"where": item.where, "loglikelihoods": lls, "answer": item.answer, "pred": pick,
                       "pred_norm": pick_norm, "acc": float(pick == item.answer),
                       "acc_norm": float(pick_norm == item.answer)})
    summary = summarize_metrics([{"acc": s["acc"], "acc_norm": s["acc_norm"]} for s in scored], samples, seed)
    return {"n": len(scored), **summary, "items": scored}
