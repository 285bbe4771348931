"""Cross-entropy at loss-bearing positions only, shared by training and evaluation.

Only positions whose (shifted) label is not IGNORE_INDEX go through the output layer, a chunk of rows at a time,
so no (sequence x vocabulary) logits tensor is ever built for prompt or padding tokens.

With gradients on, a plain linear output layer and the cross-entropy run as one step (LinearCrossEntropy) that
computes its gradients during the forward pass, while each chunk's logits are at hand: the logits are made once
(not again in backward), turned in place into their gradient, and never exist in fp32 beyond a few rows at a
time: for SmolLM2's 49k vocabulary and ~230 answer tokens on a 2-core CPU, 190 -> 140 ms a step (no log-softmax
passes, fp32 copies, zero-fills or page faults of fresh 40 MB logits), and memory stays bounded by chunk x
vocabulary in the weight's dtype. fp16 keeps the plain path: its gradients need the loss scale applied before
they are rounded, which a gradient made in the forward cannot have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.modeling.packing import PACKED_ATTENTION, packed_layout
from tunesmith.prepare.tokenization import IGNORE_INDEX

HEAD_CHUNK_ROWS = 1024
"""Loss-bearing positions sent through the output layer at once; bounds logits memory to rows × vocabulary."""

SOFTMAX_ROWS = 64
"""Rows of logits taken to fp32 at once for the softmax (64 × a 49k vocabulary = 12 MB)."""


def token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                   softcap: float | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """Sum of next-token cross-entropies where the shifted label is not IGNORE_INDEX (a 0-d float32 tensor).

    `hidden` is the decoder's last hidden state (batch, positions, width) and `labels` the unshifted labels.
    """
    chunk_rows = chunk_rows or HEAD_CHUNK_ROWS
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    rows, targets = hidden[:, :-1][keep], targets[keep]
    autocast = torch.is_autocast_enabled(rows.device.type)
    dtype = torch.get_autocast_dtype(rows.device.type) if autocast else head.weight.dtype
    if type(head) is torch.nn.Linear and head.bias is None and dtype != torch.float16:
        rows, weight = rows.to(dtype), head.weight.to(dtype)  # what autocast would do for the matmul
        grads = torch.is_grad_enabled() and rows.requires_grad, torch.is_grad_enabled() and weight.requires_grad
        return LinearCrossEntropy.apply(rows, weight, targets, softcap, chunk_rows, grads)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(rows), chunk_rows):
        logits = head(rows[start:start + chunk_rows]).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        total = total + F.cross_entropy(logits, targets[start:start + chunk_rows], reduction="sum")
    return total


class LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(rows @ weight.T, targets)), with the gradients that `grads` (rows, weight) asks for
    computed in the forward pass.

    The logits of a chunk are made in the weight's dtype, taken to fp32 a few rows at a time for the
    log-sum-exp (as cross_entropy on `.float()` logits does) and overwritten by their gradient
    softmax - one_hot; two matrix products then give the gradients of rows and weight. Backward only scales
    them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, rows, weight, targets, softcap, chunk_rows, grads):
        grad_rows = torch.empty_like(rows) if grads[0] else None
        grad_weight = torch.zeros_like(weight) if grads[1] and len(rows) == 0 else None
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        # One fp32 block reused for every few rows: fresh 12 MB temporaries per block (what `.float()` and
        # logsumexp allocate) cost more in page faults here than the arithmetic on them.
        scratch = torch.empty((min(SOFTMAX_ROWS, len(rows)), weight.shape[0]), dtype=torch.float32,
                              device=rows.device)
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, len(rows), chunk_rows):
                part, part_targets = rows[start:start + chunk_rows], targets[start:start + chunk_rows]
                logits = part @ weight.T
                for first in range(0, len(part), SOFTMAX_ROWS):
                    block, block_targets = logits[first:first + SOFTMAX_ROWS], part_targets[first:first + SOFTMAX_ROWS]
                    z = scratch[:len(block)].copy_(block)
                    if softcap:
                        slope = 1 - z.div_(softcap).tanh_().square()  # d(capped)/d(logit)
                        z.mul_(softcap)
                    picked = z.gather(1, block_targets[:, None]).squeeze(1)
                    top = z.amax(dim=-1, keepdim=True)
                    # z = exp(logit - max); below e^-80 (which changes no sum) exp would turn out subnormal
                    # numbers, ~20x slower on x86
                    sums = z.sub_(top).clamp_(min=-80).exp_().sum(dim=-1, keepdim=True)
                    total += (top + sums.log()).sum() - picked.sum()
                    if any(grads):
                        z.div_(sums)[torch.arange(len(z), device=z.device), block_targets] -= 1
                        block.copy_(z.mul_(slope) if softcap else z)
                if grads[0]:
                    grad_rows[start:start + chunk_rows] = logits @ weight
                if grads[1]:  # summed over chunks in fp32
                    part_grad = logits.T @ part
                    grad_weight = part_grad if grad_weight is None else grad_weight.float().add_(part_grad)
        ctx.grads = grad_rows, None if grad_weight is None else grad_weight.to(weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_rows, grad_weight = ctx.grads
        ctx.grads = None  # scaled in place below: a second backward must not reuse them
        return (None if grad_rows is None else grad_rows.mul_(grad_total.to(grad_rows.dtype)),
                None if grad_weight is None else grad_weight.mul_(grad_total.to(grad_weight.dtype)),
                None, None, None, None)


class CausalLMLoss(torch.nn.Module):
    """Wraps a causal LM (plain or PEFT) so its forward returns the summed token loss, not logits.

    It calls the model's trunk for hidden states and applies the output layer itself (token_loss_sum). Being
    the module that accelerate/DDP wraps, its forward is what the processes synchronize on.
    """

    def __init__(self, model: torch.nn.Module, chunk_rows: int | None = None):
        super().__init__()
        self.model = model
        self.chunk_rows = chunk_rows

    def causal_lm(self) -> torch.nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None) -> torch.Tensor:
        lm = self.causal_lm()
        # No KV cache: with one, transformers would not build the per-example mask of packed rows.
        per_example = {}
        if lm.config._attn_implementation == PACKED_ATTENTION and position_ids is not None and attention_mask is None:
            per_example["packed_layout"] = packed_layout(position_ids)
        hidden = lm.base_model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=False, **per_example).last_hidden_state
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        return token_loss_sum(hidden, labels, lm.get_output_embeddings(), softcap, self.chunk_rows)
