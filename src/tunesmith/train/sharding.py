"""Sharded training on PyTorch FSDP2 (`training.distributed: fsdp`): each process keeps 1/N of every weight,
gradient and optimizer moment, and a decoder layer's weights are gathered whole only while it runs.

The engine is PyTorch's own (`torch.distributed.fsdp.fully_shard`, FSDP2): each decoder layer is a group of
its own, then the root holds what is left (embeddings, final norm, output layer). The root is the `CausalLMLoss`
around the model, not the model: the loss calls the model's trunk and output layer itself (modeling/losses.py),
so the model's own forward, where a root on the model would gather them, never runs.

What changes beside the wrapping:
- the optimizer is built after sharding, over the sharded parameters (DTensors);
- checkpoints are sharded too, written with `torch.distributed.checkpoint` (checkpoints.py), and the final model
  is gathered once into a plain Hugging Face folder on the main process (`full_state_dict`, `plain_model`);
- the CPU speed choices that run their own copies of the weights (bf16_weights.py) are off (speed.py): they would
  bypass the gathering;
- gradients are reduce-scattered after every micro-batch, not held whole until the last one: with accumulation
  that is more communication, but the whole unsharded gradients never sit in memory, which is what sharding
  is for. FSDP2 averages them over processes, as DDP does, so the loss scaling of `accumulate_gradients` holds.

Activation checkpointing is `training.gradient_checkpointing` (transformers' own, non-reentrant), as without
sharding.
"""

from __future__ import annotations

import os

import torch

from tunesmith.config import TrainingConfig
from tunesmith.errors import TrainingError

CPU_MMAP_THRESHOLD_BYTES = 1 << 20
"""On a CPU under FSDP, allocations from this size up get pages of their own, returned when freed (glibc's
M_MMAP_THRESHOLD, otherwise up to 32 MB): each step's gather and reduce buffers are freed into glibc's heap,
which kept ~1 GB of them per process for SmolLM2-135M, pinned by the sharded gradients allocated between them
(bench/README.md: peak RSS 0.87 x DDP's with the default, 0.67 x with this)."""
M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number."""

TRAINABLE_STATE_BYTES = 16
"""Per trainable parameter in full training: the fp32 weight, its gradient, and AdamW's two fp32 moments."""


def training_state_bytes(model: torch.nn.Module) -> int:
    """The memory the model's training state takes before activations: 16 bytes per trainable parameter, the
    frozen ones (LoRA's base) as stored.

    >>> training_state_bytes(torch.nn.Linear(10, 10))
    1760
    """
    return sum(p.numel() * TRAINABLE_STATE_BYTES if p.requires_grad else p.numel() * p.element_size()
               for p in model.parameters())


def device_memory_bytes(device: torch.device) -> int:
    """What one process may count on: its GPU's memory, or on a CPU the machine's RAM shared by the processes
    running on it (`LOCAL_WORLD_SIZE`, set by torchrun)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_sharded_run(choice: str, world_size: int, state_bytes: int, device_bytes: int) -> bool:
    """Whether the run trains under FSDP: `fsdp`, or `auto` when the training state would take over half of one
    device's memory (the other half for activations and the framework). One process has nothing to shard.

    >>> is_sharded_run("auto", 2, state_bytes=6, device_bytes=10), is_sharded_run("auto", 2, 4, 10)
    (True, False)
    >>> is_sharded_run("fsdp", 1, 4, 10)
    False
    """
    if world_size == 1:
        return False
    if choice == "auto":
        return state_bytes * 2 > device_bytes
    return choice == "fsdp"


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (the classes transformers never splits across devices, `_no_split_modules`),
    innermost first, so each is sharded before anything that holds it.

    Raises:
        TrainingError: the model names no such blocks (FSDP would gather the whole model at once).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainingError(f"training.distributed=fsdp: {type(base).__name__} names no decoder layers to shard "
                            f"(_no_split_modules); use training.distributed=ddp")
    return layers[::-1]


def shard(loss_model: torch.nn.Module, training: TrainingConfig, device: torch.device, world_size: int) -> None:
    """Shard `loss_model` (a CausalLMLoss) in place across the run's processes: each decoder layer, then the root.

    CPU offload (`fsdp_cpu_offload`) applies to GPU runs only: on a CPU everything is in CPU memory already.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    if device.type == "cpu":
        return_freed_buffers()
    mesh = init_device_mesh(device.type, (world_size,))
    offload = CPUOffloadPolicy() if training.fsdp_cpu_offload and device.type != "cpu" else OffloadPolicy()
    for layer in decoder_layers(loss_model.model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=training.fsdp_reshard_after_forward,
                    offload_policy=offload)
    fully_shard(loss_model, mesh=mesh, reshard_after_forward=training.fsdp_reshard_after_forward,
                offload_policy=offload)


def return_freed_buffers() -> bool:
    """Make glibc hand freed buffers of 1 MB and more back to the system (`CPU_MMAP_THRESHOLD_BYTES`); False
    where the C library is not glibc (nothing changes)."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP shards `model` (or modules inside it). Asked of the modules, not the parameters: between a
    forward and its backward, or after a forward without one, the parameters may be gathered plain tensors."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered weights a forward without backward left (evaluation, with `fsdp_reshard_after_forward`
    off or at the root), so every parameter is a shard again before the next save or step."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_state_dict(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded `model`, gathered onto the main process's CPU (the others get {}).

    Every process must call it (the gathering is collective). With `trainable_only`, only the parameters
    training changes (all of a full model, LoRA's adapters), keyed as `named_parameters` names them.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if k in trainable} if trainable_only else state


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put whole weights (every process holds them, e.g. read from `checkpoints/best`) into a sharded `model`;
    each process keeps its shard. Keys the state lacks keep their values."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
    )

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
