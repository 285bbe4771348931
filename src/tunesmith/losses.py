"""Cross-entropy at loss-bearing positions only, shared by training and evaluation.

Only positions whose (shifted) label is not IGNORE_INDEX go through the output layer, a chunk of rows at a time,
so no (sequence x vocabulary) logits tensor is ever built for prompt or padding tokens. With gradients on, each
chunk's logits are recomputed in the backward pass instead of kept, so memory stays bounded by chunk x vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunesmith.tokenization import IGNORE_INDEX

HEAD_CHUNK_ROWS = 1024
"""Loss-bearing positions sent through the output layer at once; bounds logits memory to rows × vocabulary."""


def token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                   softcap: float | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """Sum of next-token cross-entropies where the shifted label is not IGNORE_INDEX (a 0-d float32 tensor).

    `hidden` is the decoder's last hidden state (batch, positions, width) and `labels` the unshifted labels.
    """
    chunk_rows = chunk_rows or HEAD_CHUNK_ROWS
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    rows, targets = hidden[:, :-1][keep], targets[keep]

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        return F.cross_entropy(logits, t, reduction="sum")

    if len(rows) <= chunk_rows:
        return chunk_loss(rows, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(rows), chunk_rows):
        part = slice(start, start + chunk_rows)
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_loss, rows[part], targets[part], use_reentrant=False)
        else:
            total = total + chunk_loss(rows[part], targets[part])
    return total
