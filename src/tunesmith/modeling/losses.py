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

Applying the output layer outside the model's forward is only right where that forward does nothing else:
the logit scaling of Granite and Cohere and the soft-capping of Gemma are applied here too (`head_transform`),
and an architecture not known to be safe, or an MoE whose own loss adds a router auxiliary loss, runs its own
forward instead (`model_loss_sum`), at the cost of its logits at answer positions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.modeling.batches import flatten_packed
from tunesmith.modeling.packing import ONE_ROW, PACKED_ATTENTION, attention_plan, packed_layout
from tunesmith.prepare.tokenization import IGNORE_INDEX

HEAD_CHUNK_ROWS = 1024
"""Loss-bearing positions sent through the output layer at once; bounds logits memory to rows × vocabulary."""

SOFTMAX_ROWS = 64
"""Rows of logits taken to fp32 at once for the softmax on a CPU (64 × a 49k vocabulary = 12 MB)."""


def softmax_rows(device_type: str, chunk_rows: int) -> int:
    """Rows per fp32 softmax block of the fused loss, chosen by device (with train/speed.py's choices, but here:
    evaluation runs this loss too). A CPU takes SOFTMAX_ROWS, a block small enough to stay in cache; a GPU
    takes the whole head chunk at once, where small blocks would leave it waiting on kernel launches."""
    return SOFTMAX_ROWS if device_type == "cpu" else chunk_rows


def token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                   softcap: float | None = None, chunk_rows: int | None = None, scale: float = 1.0) -> torch.Tensor:
    """Sum of next-token cross-entropies where the shifted label is not IGNORE_INDEX (a 0-d float32 tensor).

    `hidden` is the decoder's last hidden state (batch, positions, width) and `labels` the unshifted labels. The
    logits are softcap(scale × head(hidden)), as the model's own forward makes them (`head_transform`).
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
        return LinearCrossEntropy.apply(rows, weight, targets, scale, softcap, chunk_rows, grads)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(rows), chunk_rows):
        logits = head(rows[start:start + chunk_rows]).float()
        if scale != 1.0:
            logits = logits * scale
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        total = total + F.cross_entropy(logits, targets[start:start + chunk_rows], reduction="sum")
    return total


class LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(softcap(scale × rows @ weight.T), targets)), with the gradients that `grads` (rows,
    weight) asks for computed in the forward pass.

    The logits of a chunk are made in the weight's dtype, taken to fp32 a few rows at a time for the
    log-sum-exp (as cross_entropy on `.float()` logits does) and overwritten by their gradient
    softmax - one_hot; two matrix products then give the gradients of rows and weight. Backward only scales
    them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, rows, weight, targets, scale, softcap, chunk_rows, grads):
        grad_rows = torch.empty_like(rows) if grads[0] else None
        grad_weight = torch.zeros_like(weight) if grads[1] and len(rows) == 0 else None
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        # One fp32 block reused for every few rows: fresh 12 MB temporaries per block (what `.float()` and
        # logsumexp allocate) cost more in page faults here than the arithmetic on them.
        block_rows = softmax_rows(rows.device.type, chunk_rows)
        scratch = torch.empty((min(block_rows, len(rows)), weight.shape[0]), dtype=torch.float32,
                              device=rows.device)
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, len(rows), chunk_rows):
                part, part_targets = rows[start:start + chunk_rows], targets[start:start + chunk_rows]
                logits = part @ weight.T
                for first in range(0, len(part), block_rows):
                    block, block_targets = logits[first:first + block_rows], part_targets[first:first + block_rows]
                    z = scratch[:len(block)].copy_(block)
                    if scale != 1.0:
                        z.mul_(scale)
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
                        if softcap:
                            z.mul_(slope)
                        block.copy_(z.mul_(scale) if scale != 1.0 else z)  # d(scaled)/d(logit) = scale
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
                None, None, None, None, None)


FUSED_HEAD_MODELS = frozenset({
    "llama", "mistral", "ministral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "smollm3",
    "olmo", "olmo2", "starcoder2", "stablelm", "granite", "cohere", "cohere2", "mixtral", "qwen2_moe", "qwen3_moe",
})
"""Architectures (`config.model_type`) whose `ForCausalLM.forward` makes its logits as `head_transform` says
(read in transformers 5): for them the loss may apply the output layer itself. Any other runs its own forward."""


@dataclass(frozen=True)
class HeadTransform:
    """What a model's forward does to its output layer's result before the loss: logits = softcap(scale × h W^T)."""

    scale: float = 1.0
    softcap: float | None = None


def head_transform(config) -> HeadTransform | None:
    """The logit scaling and soft-capping the fused path must apply to train on the logits the model serves, or
    None when the model's own forward has to run: an architecture not in FUSED_HEAD_MODELS, or a router auxiliary
    loss that the model's own loss adds (MoE with `output_router_logits`).

    Granite divides its logits by `logits_scaling`, Cohere multiplies them by `logit_scale`, Gemma 2 and 3
    soft-cap them at `final_logit_softcapping`.
    """
    kind = getattr(config, "model_type", None)
    if kind not in FUSED_HEAD_MODELS:
        return None
    if getattr(config, "output_router_logits", False) and getattr(config, "router_aux_loss_coef", 0.0):
        return None
    scale = 1.0
    if kind == "granite":
        scale = 1.0 / config.logits_scaling
    elif kind in ("cohere", "cohere2"):
        scale = float(config.logit_scale)
    return HeadTransform(scale, getattr(config, "final_logit_softcapping", None))


def model_loss_sum(lm: torch.nn.Module, labels: torch.Tensor, inputs: dict) -> torch.Tensor:
    """The summed token loss through the model's own forward, for architectures the fused path does not know.

    The cross-entropy is taken of the logits the forward returns (after whatever it does to them), only at
    positions where some row has an answer token when the model takes `logits_to_keep`. A router auxiliary loss
    (MoE) is added as the model's own loss adds it: that loss is a MEAN over answer tokens plus coef × aux, so
    the sum gets coef × aux × answer tokens (tunesmith divides by the answer tokens of the whole step).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    positions = keep.any(0).nonzero().squeeze(1)
    if "logits_to_keep" in inspect.signature(lm.forward).parameters:
        inputs = {**inputs, "logits_to_keep": positions}
    outputs = lm(**inputs)
    logits = outputs.logits
    if logits.shape[1] != len(positions):  # the model returned every position's logits
        logits = logits[:, positions]
    total = F.cross_entropy(logits.float().flatten(0, 1), targets[:, positions].flatten(), reduction="sum",
                            ignore_index=IGNORE_INDEX)
    aux, coef = getattr(outputs, "aux_loss", None), getattr(lm.config, "router_aux_loss_coef", 0.0)
    if torch.is_tensor(aux) and coef:
        total = total + coef * aux.float() * keep.sum()
    return total


class CausalLMLoss(torch.nn.Module):
    """Wraps a causal LM (plain or PEFT) so its forward returns the summed token loss, not logits.

    For the architectures it knows (`head_transform`) it calls the model's trunk for hidden states and applies the
    output layer itself (token_loss_sum), with the model's logit scaling and soft-capping; any other runs through
    its own forward (`model_loss_sum`). Being the module that accelerate/DDP wraps, its forward is what the
    processes synchronize on.
    """

    def __init__(self, model: torch.nn.Module, chunk_rows: int | None = None):
        super().__init__()
        self.model = model
        self.chunk_rows = chunk_rows
        self.prefix_cache = None
        """A FrozenPrefixCache (frozen_prefix.py) when the run's lower layers are frozen; batches with a
        `cache_index` then use it."""

    def causal_lm(self) -> torch.nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None, cache_index=None) -> torch.Tensor:
        lm = self.causal_lm()
        attention = lm.config._attn_implementation
        packed = position_ids is not None and attention_mask is None
        if packed and len(input_ids) > 1 and attention_plan(input_ids.device.type, attention) == ONE_ROW:
            flat = flatten_packed({"input_ids": input_ids, "position_ids": position_ids, "labels": labels})
            input_ids, position_ids, labels = flat["input_ids"], flat["position_ids"], flat["labels"]
            cache_index = None if cache_index is None else cache_index.reshape(1, -1)
        if cache_index is not None and self.prefix_cache is not None:
            with self.prefix_cache.applied(cache_index):
                return self._loss(lm, attention, packed, input_ids, labels, position_ids, attention_mask)
        return self._loss(lm, attention, packed, input_ids, labels, position_ids, attention_mask)

    def _loss(self, lm, attention, packed, input_ids, labels, position_ids, attention_mask) -> torch.Tensor:
        # No KV cache: with one, transformers would not build the per-example mask of packed rows.
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask,
                  "use_cache": False}
        if attention == PACKED_ATTENTION and packed:
            inputs["packed_layout"] = packed_layout(position_ids)
        transform = head_transform(lm.config)
        if transform is None:
            return model_loss_sum(lm, labels, inputs)
        hidden = lm.base_model(**inputs).last_hidden_state
        return token_loss_sum(hidden, labels, lm.get_output_embeddings(), transform.softcap, self.chunk_rows,
                              transform.scale)
