"""The test loss: mean cross-entropy per answer token, the one routine training and evaluation both use.

Training calls it on its rank's share of the test split every `eval_every_steps` (packed rows, the bf16 weight
copies, summed over processes); evaluation calls it on a run's test split or a data file (padded rows sorted by
length, one process). Either way the number is the same quantity: the summed token loss of `CausalLMLoss`
(output layer only at answer positions) divided by the count of answer tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.precision import autocast_for
from tunesmith.prepare.tokenization import IGNORE_INDEX


@dataclass(frozen=True)
class TestLoss:
    """Mean loss per answer token, its perplexity, and how many answer tokens it was taken over."""

    __test__ = False  # not a pytest class

    loss: float
    perplexity: float
    tokens: int

    def to_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens}


def test_batches(examples: Sequence[dict], batch_size: int, packing: bool, max_row_tokens: int,
                 pad_token_id: int, by_length: bool = False):
    """Model-ready batches of `batch_size` examples; `by_length` groups similar lengths (less padding, same sums).

    >>> [len(b["input_ids"]) for b in test_batches([{"input_ids": [5], "labels": [5]}] * 3, 2, False, 8, 0)]
    [2, 1]
    """
    order = list(range(len(examples)))
    if by_length:
        order.sort(key=lambda i: len(examples[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield make_batch([examples[i] for i in order[start:start + batch_size]], packing, max_row_tokens,
                         pad_token_id)


test_batches.__test__ = False  # not a pytest function


@torch.no_grad()
def test_loss(forward: Callable[..., torch.Tensor], batches, device: torch.device, precision: str = "fp32",
              reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, progress=None) -> TestLoss | None:
    """Mean loss per answer token over `batches`; None when they hold no answer token.

    `forward(**batch)` returns a batch's summed token loss (a `CausalLMLoss`, or one running bf16 weight copies);
    `reduce` sums a tensor over processes (each process passes its own share of the batches); `progress` is
    a tqdm-like bar advanced by each batch's row count.
    """
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_for(precision, device):
            total[0] += forward(**batch).double()
        total[1] += (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        if progress is not None:
            progress.update(len(batch["input_ids"]))
    if reduce is not None:
        total = reduce(total)
    loss_sum, tokens = total.tolist()
    if tokens == 0:
        return None
    loss = loss_sum / tokens
    return TestLoss(loss=loss, perplexity=math.exp(loss), tokens=int(tokens))


test_loss.__test__ = False  # not a pytest function
