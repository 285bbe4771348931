"""Packing: several examples share one row so no compute goes to padding, with attention kept per example.

A packed row carries `position_ids` that restart at 0 for every example and NO 2-D attention mask. From
exactly that, transformers (masking_utils.find_packed_sequence_indices, used by the sdpa and eager attention
paths) builds a block-diagonal causal mask: a new example starts wherever the position does not grow by one.
Passing any 2-D mask, even all ones, turns that detection off and lets packed examples see each other, and so
does a KV cache; the trainer therefore calls the model with `use_cache=False` and no attention mask.

The mask is quadratic in the row length, so rows are capped at a token budget (the data's `max_length`)
rather than concatenating a whole batch into one long row.
"""

from __future__ import annotations

from tunesmith.tokenization import IGNORE_INDEX

MIN_ROW_TOKENS = 512
"""Packed rows may hold this many tokens even when examples are short: with rows of even width, fewer and
longer rows leave almost no padding, and at this length the per-example attention mask costs little next to
the model's matrix products."""


def pack_rows(lengths: list[int], max_row_tokens: int) -> list[list[int]]:
    """Group example indices into as few rows as the budget allows, of nearly equal width.

    Rows are padded to the widest one, so a full row next to a nearly empty one wastes almost half the batch
    (8 examples of 72 tokens under a 512 budget: 512 + 64 -> 41% padding). So ceil(total / budget) rows are
    opened first, and examples, longest first, each go into the emptiest row (worst-fit decreasing,
    deterministic: ties keep the input order); a new row opens only when no row has room under the budget.
    An example longer than the budget gets a row of its own.

    >>> pack_rows([5, 3, 4, 2], max_row_tokens=8)
    [[0, 3], [1, 2]]
    """
    if not lengths:
        return []
    rows: list[list[int]] = [[] for _ in range(-(-sum(lengths) // max_row_tokens))]
    used = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(len(rows)), key=lambda r: used[r])
        if used[r] and used[r] + lengths[i] > max_row_tokens:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        used[r] += lengths[i]
    return [sorted(row) for row in rows if row]


def collate_packed(examples: list[dict], max_row_tokens: int, pad_token_id: int) -> dict:
    """Pack tokenized examples into right-padded rows with per-example `position_ids` and labels.

    Each example's first label becomes IGNORE_INDEX: after the usual one-token shift it would otherwise be
    predicted from the previous example's last token. Unpacked, that label is never used either, so packed and
    unpacked losses are the same. Padding gets position 0 (a one-token "example" of its own) and label -100.

    >>> batch = collate_packed([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}], 4, 0)
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7]], [[0, 1, 0]], [[-100, 6, -100]])
    """
    import torch

    rows = pack_rows([len(e["input_ids"]) for e in examples], max_row_tokens)
    width = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            ids, labs = examples[i]["input_ids"], examples[i]["labels"]
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids)
            position_ids[r, start:end] = torch.arange(len(ids))
            labels[r, start + 1:end] = torch.tensor(labs[1:], dtype=torch.long)
            start = end
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
