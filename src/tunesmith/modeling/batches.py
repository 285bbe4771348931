"""Model-ready micro-batches: padded rows, or packed rows (several examples to a row, see packing.py).

Collation only pads and packs: masking was decided in tokenization (labels are IGNORE_INDEX where no loss is
taken), so padding gets IGNORE_INDEX labels and attention 0 and nothing else changes.
"""

from __future__ import annotations

from typing import Sequence

from tunesmith.modeling.packing import collate_packed
from tunesmith.prepare.tokenization import IGNORE_INDEX


def _as_list(values) -> list[int]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def pad_collate(examples: Sequence[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad a batch to its longest example; nothing else changes (labels -100 and attention 0 on padding).

    [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad 0, right
    -> input_ids [[5, 6, 7], [8, 0, 0]], attention_mask [[1, 1, 1], [1, 0, 0]], labels [[-100, 6, 7], [8, -100, -100]]
    """
    import torch

    longest = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for example in examples:
        ids, labels = _as_list(example["input_ids"]), _as_list(example["labels"])
        pad = longest - len(ids)
        rows = (ids, [1] * len(ids), labels)
        fills = (pad_token_id, 0, IGNORE_INDEX)
        for key, row, fill in zip(batch, rows, fills):
            batch[key].append(row + [fill] * pad if padding_side == "right" else [fill] * pad + row)
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


def make_batch(examples: list[dict], packing: bool, max_row_tokens: int, pad_token_id: int,
               padding_side: str = "right") -> dict:
    """A model-ready micro-batch: packed rows, or rows padded on `padding_side` (`tokenization.padding_side`)
    with positions counted from each example's first real token, so either side gives the same loss.

    Packed rows are always right-padded: their padding is one-token examples of its own, seen by nobody.
    """
    if packing:
        return collate_packed(examples, max_row_tokens, pad_token_id)
    batch = pad_collate(examples, pad_token_id, padding_side)
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return batch


def flatten_packed(batch: dict) -> dict:
    """A packed micro-batch's rows laid end to end as ONE row, for attention that finds packed examples only in a
    batch of one row (flash attention: packing.attention_plan). Positions still restart at every example, and no
    attention mask is added, so examples stay apart by construction; each row's first label is IGNORE_INDEX, so
    the one-token shift adds no loss across a row boundary, and the summed loss is that of the rows.

    {"input_ids": [[5, 6], [7, 0]], "position_ids": [[0, 1], [0, 0]], "labels": [[-100, 6], [-100, -100]]}
    -> {"input_ids": [[5, 6, 7, 0]], "position_ids": [[0, 1, 0, 0]], "labels": [[-100, 6, -100, -100]]}
    """
    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX
    return {"input_ids": batch["input_ids"].reshape(1, -1), "position_ids": batch["position_ids"].reshape(1, -1),
            "labels": labels.reshape(1, -1)}
