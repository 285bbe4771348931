"""Work shared by the processes of a run: each takes its part of a step (or of the test split), and the sums
are added over processes, so one process and several give the same numbers.

accelerate runs the processes (gloo on CPU, NCCL on GPUs) and wraps the model in DDP; under
`training.distributed: fsdp` PyTorch's FSDP2 shards it instead (sharding.py). With one process every reduce is a
no-op.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import torch

from tunesmith.config import TrainingConfig
from tunesmith.errors import TrainingError
from tunesmith.evaluate.test_loss import test_batches, test_loss
from tunesmith.modeling.precision import autocast_for
from tunesmith.models import default_device
from tunesmith.prepare.tokenization import IGNORE_INDEX
from tunesmith.train.sharding import (
    device_memory_bytes,
    is_sharded,
    is_sharded_run,
    reshard,
    training_state_bytes,
)
from tunesmith.train.speed import SpeedChoices, speed_choices


def uses_cpu() -> bool:
    """Without a GPU accelerate must be told so, or under torchrun it runs each process alone instead of gloo.

    Every accelerate state in a process must agree on this (the first one made wins), so all use this function.
    """
    return default_device().type == "cpu"


def process_state():
    """accelerate's view of the processes of this run (rank, world size, main process).

    A PartialState holds no precision; the Accelerator made later (`make_accelerator`) sets it."""
    from accelerate import PartialState

    return PartialState(cpu=uses_cpu())


def make_accelerator():
    """The run's Accelerator, with mixed precision off whatever `accelerate launch` or `accelerate config` put in
    ACCELERATE_MIXED_PRECISION: tunesmith runs its own autocast and GradScaler (training.precision), and
    accelerate's would wrap the forward in a second autocast (bf16 under `precision: fp32`) or add a second
    loss scaler under fp16."""
    from accelerate import Accelerator

    return Accelerator(cpu=uses_cpu(), mixed_precision="no")


@dataclass(frozen=True)
class Runtime:
    """Where and how this process trains: its place among the run's processes, its device, its precision."""

    accelerator: Any
    """accelerate's Accelerator: reduces, backward, DDP wrapping."""
    rank: int
    world: int
    is_main: bool
    """The process that writes the run's files."""
    device: torch.device
    precision: str
    """fp32, bf16 or fp16, resolved for the device (`auto` made concrete)."""
    speed: SpeedChoices
    """The device's speed choices (speed.py)."""
    sharded: bool = False
    """FSDP2 shards the model across the processes (`training.distributed`, resolved by `with_distribution`)."""


def with_distribution(runtime: Runtime, training: TrainingConfig, model) -> Runtime:
    """`runtime` with the run's distribution resolved for the built `model` (`sharding.is_sharded_run`), and the
    speed choices that go with it. Every process decides alike: `auto` compares with the smallest device."""
    device_bytes = device_memory_bytes(runtime.device)
    if runtime.world > 1 and training.distributed == "auto":
        import torch.distributed as dist

        smallest = torch.tensor([device_bytes], dtype=torch.float64, device=runtime.device)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        device_bytes = int(smallest.item())
    sharded = is_sharded_run(training.distributed, runtime.world, training_state_bytes(model), device_bytes)
    if sharded and training.method == "qlora":
        raise TrainingError("training.method=qlora with training.distributed=fsdp: 4-bit weights are not sharded "
                            "here; use training.distributed=ddp (QLoRA's frozen base is small)")
    if sharded and training.trainable_layers and training.method == "full":
        raise TrainingError("training.trainable_layers with training.distributed=fsdp: sharding a model whose lower "
                            "layers are frozen is not supported yet; use training.distributed=ddp (its training "
                            "state is that of the trained layers only) or leave trainable_layers unset")
    if not sharded:
        return runtime
    return replace(runtime, sharded=True,
                   speed=speed_choices(runtime.device.type, training.method, runtime.precision, sharded=True))


def gather_objects(obj) -> list:
    """`obj` of every process, in rank order (for example each one's RNG state)."""
    from accelerate.utils import gather_object

    return gather_object([obj])


def count_loss_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def accumulate_gradients(loss_model, batches: list[dict], accelerator, precision: str, real_tokens: int = 0,
                         scale=lambda loss: loss, forward=None) -> tuple[float, int, int]:
    """Backward over one optimizer step's micro-batches; returns (summed loss, loss tokens, real tokens), global.

    `real_tokens` is this process's count of non-padding tokens, only summed over processes for reporting.
    `forward` runs the model (default: `loss_model` itself; bf16 copies of its weights during bf16 training).

    Each micro-batch's summed token loss is divided by the loss-bearing tokens of the WHOLE step (every
    micro-batch, every process) before its backward, so the gradients add up to that of one big batch.
    """
    world, device = accelerator.num_processes, accelerator.device
    counts = torch.tensor([sum(count_loss_tokens(b) for b in batches), real_tokens], dtype=torch.float64,
                          device=device)
    loss_tokens, real_tokens = accelerator.reduce(counts, reduction="sum").tolist()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    forward = forward or loss_model
    sharded = is_sharded(loss_model)
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        # Under DDP processes synchronize gradients only after the last micro-batch (FSDP after each, so that no
        # whole gradient is ever held: sharding.py); both AVERAGE them over processes, which the factor
        # world_size turns back into the global token mean.
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or sharded else accelerator.no_sync(loss_model)
        with sync:
            with autocast_for(precision, device):
                summed = forward(**batch)
            accelerator.backward(scale(summed * world / max(loss_tokens, 1)))
        loss_sum += summed.detach().double()
    total = accelerator.reduce(loss_sum, reduction="sum").item()
    return total, int(loss_tokens), int(real_tokens)


def evaluate_loss(loss_model, examples: list[dict], training: TrainingConfig, max_row_tokens: int, pad_token_id: int,
                  precision: str, accelerator, forward=None) -> float | None:
    """Test loss now: each process takes every world_size-th test example; the sums are added over processes.

    `forward` runs the model (default: `loss_model` itself; bf16 copies of its weights during bf16 training).

    The batches run through the module inside the DDP wrapper: DDP's forward may talk to the other processes
    (it broadcasts buffers), and processes with different numbers of test batches (one may have none) would
    then wait on collectives that never match. The one collective is the reduce of the two sums, which every
    process reaches once. Under FSDP every forward gathers each layer's weights from all processes: there each
    process runs as many batches, the short ones topped up with batches without answer tokens (they add 0).
    """
    mine = examples[accelerator.process_index::accelerator.num_processes]
    inner = accelerator.unwrap_model(loss_model)
    inner.eval()
    batches = test_batches(mine, training.batch_size, training.packing, max_row_tokens, pad_token_id)
    if is_sharded(inner):
        batches = list(batches)
        batches += [blank_batch(training.packing, pad_token_id)] * (most_batches(len(batches), accelerator)
                                                                    - len(batches))
    result = test_loss(forward or inner, batches, accelerator.device, precision,
                       reduce=lambda t: accelerator.reduce(t, reduction="sum"))
    if is_sharded(inner):
        reshard(inner)
    inner.train()
    return result.loss if result is not None else None


def most_batches(count: int, accelerator) -> int:
    """The largest of every process's `count`."""
    import torch.distributed as dist

    largest = torch.tensor([count], dtype=torch.int64, device=accelerator.device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return int(largest.item())


def blank_batch(packing: bool, pad_token_id: int) -> dict:
    """A one-row batch without answer tokens: its forward runs (and gathers what it must), its loss adds 0."""
    from tunesmith.modeling.batches import make_batch

    return make_batch([{"input_ids": [pad_token_id] * 2, "labels": [IGNORE_INDEX] * 2}], packing, 2, pad_token_id)
