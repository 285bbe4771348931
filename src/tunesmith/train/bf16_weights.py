"""bf16 working copies of a model's matrix weights, so bf16 training stops re-casting them every step.

Under bf16 autocast a model keeps fp32 weights: every forward casts each matrix weight to bf16, and every
backward casts its bf16 gradient back to fp32. For a 135M model on a 2-core CPU those casts are ~10% of a step.
Here each Linear weight is cast once: to bf16 after each optimizer step (trainable weights) or once for the
whole run (frozen weights, LoRA's base). The numbers are the ones autocast produces: the forward multiplies the
same bf16 weights, and the gradient reaching the fp32 master is the same bf16 gradient, converted.
Used on CPUs only (speed.py): on a GPU the copies and fp32 gradient buffers would cost memory for no
time won.

- Trainable weights (full finetuning) stay fp32 in the model: they are the masters the optimizer updates and
  checkpoints save. The forward runs on bf16 copies (`functional_call`); each copy's gradient is added to its
  master's `.grad` in fp32 as soon as it is complete, and freed. The output layer gets a copy too, while the
  input embedding it is tied to in small models keeps looking up fp32 rows, so the residual stream stays fp32
  as under plain autocast.
- Frozen weights (the base under LoRA) are replaced by bf16 in place: half the memory, nothing cast per step.
  A frozen output layer tied to the embeddings gets a bf16 weight of its own, while the embedding lookup keeps
  its fp32 rows (the residual stream stays fp32). `restore_frozen` reloads them in fp32 from the model file,
  and ties the output layer again, before the model is merged or saved.

LoRA adapters are small and stay fp32.
"""

from __future__ import annotations

import torch

from tunesmith.config import ModelConfig


def matrix_weights(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The fp32 Linear weights worth keeping in bf16, by name: all but LoRA adapters."""
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".lora_" not in name and module.weight.dtype == torch.float32}


def tied_embeddings(model: torch.nn.Module, weights: dict[str, torch.nn.Parameter]) -> list[torch.nn.Embedding]:
    """The input embeddings whose weight is also one of `weights` (an output layer tied to them)."""
    ids = {id(p) for p in weights.values()}
    return [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and id(m.weight) in ids]


class TrainableCopies:
    """bf16 copies of trainable matrix weights for the forward; gradients flow back into the fp32 masters.

    An embedding tied to a copied output layer gets a sparse gradient (only the rows looked up): the output
    layer's dense gradient reaches the master first, backward running from the loss, and the sparse rows are
    added into it, instead of a zero-filled vocabulary x width matrix per step (0.1 s a step for SmolLM2).
    """

    def __init__(self, module: torch.nn.Module, masters: dict[str, torch.nn.Parameter]):
        self.module, self.masters, self.copies = module, masters, {}
        for name, master in masters.items():
            copy = master.detach().to(torch.bfloat16).requires_grad_(True)
            copy.register_post_accumulate_grad_hook(self._into_master(master, torch.empty_like(master)))
            self.copies[name] = copy
        self.sparse_embeddings = [m for m in tied_embeddings(module, masters) if not m.sparse]
        for embedding in self.sparse_embeddings:
            embedding.sparse = True

    @staticmethod
    def _into_master(master: torch.nn.Parameter, buffer: torch.Tensor):
        """The hook of one copy. Its master's gradient always lives in the same `buffer`, whoever sets `.grad`
        to None between steps: fresh fp32 gradients every step fault their pages in anew, which measured ~9% of
        a full-finetuning step here (the price: they stay in memory during the forward, +4% peak RSS)."""
        def add(copy: torch.Tensor) -> None:
            if master.grad is None:
                master.grad = buffer.copy_(copy.grad)
            elif master.grad.is_sparse:
                master.grad = buffer.copy_(copy.grad).add_(master.grad)
            else:
                master.grad.add_(copy.grad)
            copy.grad = None
        return add

    def __call__(self, **inputs):
        return torch.func.functional_call(self.module, self.copies, kwargs=inputs, tie_weights=False)

    @torch.no_grad()
    def refresh(self) -> None:
        """After an optimizer step: the masters' new values, rounded to bf16."""
        torch._foreach_copy_(list(self.copies.values()), list(self.masters.values()))

    def close(self) -> None:
        """Training is over: embeddings give dense gradients again, as any other trainer expects."""
        for embedding in self.sparse_embeddings:
            embedding.sparse = False


def bf16_trainable_copies(loss_model: torch.nn.Module) -> TrainableCopies | None:
    """Copies of `loss_model`'s trainable matrix weights, or None when it has none (LoRA)."""
    masters = {name: p for name, p in matrix_weights(loss_model).items() if p.requires_grad}
    return TrainableCopies(loss_model, masters) if masters else None


@torch.no_grad()
def frozen_to_bf16(model: torch.nn.Module) -> int:
    """Store the frozen matrix weights in bf16, in place; returns how many were converted.

    A model loaded from safetensors lives in a memory map of the file: reading the fp32 weights to convert them
    makes their pages resident, and they stay counted in the process's memory as long as any tensor still
    points into the map. So the tensors that stay (embeddings, norms, adapters, buffers) are copied out of it
    too, and the map, with its pages, is released.
    """
    weights = matrix_weights(model)
    tied = {id(m.weight) for m in tied_embeddings(model, weights)}
    frozen = [p for p in weights.values() if not p.requires_grad and id(p) not in tied]
    for p in frozen:
        p.data = p.data.to(torch.bfloat16)
    for name, p in weights.items():  # a frozen output layer tied to the embedding: a bf16 weight of its own
        if id(p) in tied and not p.requires_grad:
            layer = model.get_submodule(name.removesuffix(".weight"))
            layer.weight = torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
            frozen.append(layer.weight)
    if frozen:
        for tensor in [*model.parameters(), *model.buffers()]:  # each shared (tied) tensor once
            if tensor.dtype != torch.bfloat16:
                tensor.data = tensor.data.clone()
    return len(frozen)


@torch.no_grad()
def restore_frozen(model: torch.nn.Module, model_cfg: ModelConfig) -> None:
    """Put the frozen bf16 weights back in fp32, exactly as stored in the model file (for merging and saving).

    The file loads onto the CPU: each weight goes back onto its own parameter's device, or a base left on the
    CPU under adapters on a GPU would fail the merge and every later forward.
    """
    from tunesmith.models import load_model

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = load_model(model_cfg, dtype=torch.float32)
    for name, module in original.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        target = base.get_submodule(name)
        target = getattr(target, "base_layer", target)
        if target.weight.dtype == torch.bfloat16 and not target.weight.requires_grad:
            target.weight.data = module.weight.data.to(device=target.weight.device, dtype=torch.float32)
    if original.get_output_embeddings().weight is original.get_input_embeddings().weight:
        base.get_output_embeddings().weight = base.get_input_embeddings().weight  # tied again, as in the file
