"""What happens at each optimizer step, as pure functions of the step: the learning rate and the examples.

Nothing here keeps state (the epoch's order is cached, a pure function's result): the learning rate is a function
of the step, the data order a function of seed and epoch, so a run resumed at step k takes exactly the steps an
uninterrupted run takes from k on, with no scheduler or sampler state in the checkpoint. The one function that
reads a file: `with_default_learning_rate`, which sizes the model from its config to pick the default peak rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tunesmith.config import ModelConfig, TrainingConfig, learning_rate
from tunesmith.errors import ConfigError, ModelError


def warmup_steps(training: TrainingConfig, total_steps: int) -> int:
    """Explicit `warmup_steps`, else `warmup_ratio` of the run (rounded up so a small ratio still warms up)."""
    if training.warmup_steps is not None:
        return training.warmup_steps
    return math.ceil(training.warmup_ratio * total_steps)


def lr_at(step: int, peak: float, total_steps: int, warmup: int, schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then linear/cosine decay to 0 or constant.

    A pure function of the step, so resuming needs no scheduler state.

    >>> [round(lr_at(s, 1.0, 4, 2, "linear"), 3) for s in range(4)]
    [0.5, 1.0, 1.0, 0.5]
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@lru_cache(maxsize=2)
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example order of one epoch, the same in every process and every resumed run.

    Made once per epoch and kept (read-only): permuting a million examples at every step would cost more than
    the step's data. A pure function of its arguments, so the cache changes no result.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.setflags(write=False)
    return order


def steps_per_epoch(num_examples: int, examples_per_step: int, world_size: int) -> int:
    """Optimizer steps in one epoch; a last partial step is kept when every process gets an example of it."""
    full, rest = divmod(num_examples, examples_per_step)
    return full + (1 if rest >= world_size else 0)


def step_examples(step: int, num_examples: int, training: TrainingConfig, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """Example indices of each micro-batch this process runs at optimizer step `step`.

    The step's examples are cut into one contiguous shard per process, and each shard into the same number of
    micro-batches in every process (fewer than `gradient_accumulation_steps` only for a short last step).

    >>> from tunesmith.config import TrainingConfig
    >>> len(step_examples(0, 8, TrainingConfig(batch_size=2, gradient_accumulation_steps=4, seed=0)))
    4
    """
    per_step = training.batch_size * training.gradient_accumulation_steps * world_size
    epoch, index = divmod(step, steps_per_epoch(num_examples, per_step, world_size))
    chosen = epoch_order(num_examples, training.seed, epoch)[index * per_step:(index + 1) * per_step]
    shard = np.array_split(chosen, world_size)[rank]
    micro = min(training.gradient_accumulation_steps, len(chosen) // world_size)
    return [part.tolist() for part in np.array_split(shard, micro)]


@dataclass(frozen=True)
class StepPlan:
    """How long the run is and how fast it learns: fixed before the first step, the same when resumed."""

    epoch_steps: int
    """Optimizer steps in one pass over the training examples."""
    total_steps: int
    """Optimizer steps of the whole run (`max_steps`, else `epochs` passes)."""
    warmup_steps: int
    peak_lr: float
    schedule: str
    """`training.lr_scheduler`: linear, cosine or constant after the warmup."""

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return lr_at(step, self.peak_lr, self.total_steps, self.warmup_steps, self.schedule)

    def epochs(self, steps: int) -> float:
        """`steps` optimizer steps in epochs, as metrics and the summary report them."""
        return round(steps / self.epoch_steps, 4)


def plan_steps(training: TrainingConfig, num_examples: int, world_size: int) -> StepPlan:
    """The run's step plan for `num_examples` training examples fed to `world_size` processes.

    >>> plan_steps(TrainingConfig(batch_size=2, epochs=1.5, warmup_steps=1), 8, 1).total_steps
    6
    """
    per_step = training.batch_size * training.gradient_accumulation_steps * world_size
    epoch_steps = steps_per_epoch(num_examples, per_step, world_size)
    total_steps = training.max_steps or max(1, math.ceil(training.epochs * epoch_steps))
    return StepPlan(epoch_steps=epoch_steps, total_steps=total_steps,
                    warmup_steps=warmup_steps(training, total_steps), peak_lr=learning_rate(training),
                    schedule=training.lr_scheduler)


def with_default_learning_rate(training: TrainingConfig, model_cfg: ModelConfig) -> TrainingConfig:
    """`training` with its learning rate set: the configured one, or the default for the method and the model's
    size (`config.learning_rate`), read from the model's config file, so the schedule, the fingerprint and the
    summary all see the rate the run uses."""
    if training.learning_rate is not None:
        return training
    from tunesmith.models import load_model_config
    from tunesmith.train.plan import ModelShape

    try:
        params = ModelShape.from_config(load_model_config(model_cfg)).total_params
    except (ConfigError, ModelError):
        params = None  # not a decoder-only config tunesmith can size: the usual rate; loading reports the rest
    return training.model_copy(update={"learning_rate": learning_rate(training, params)})
