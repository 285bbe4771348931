"""The frozen lower layers' output, kept per training token, so later epochs skip those layers.

With `training.trainable_layers` the embeddings and the lower decoder layers are frozen, and nothing random runs
in them (no dropout), so what they hand the first trained layer for a training example is the same every epoch.
The first time an example is seen, a hook on the last frozen layer keeps its output; once every token of a
micro-batch is kept, the frozen layers do no work: each passes its input through, and the last one returns the
kept states, laid out as the micro-batch is. On SmolLM2-135M (30 layers, fp32, 2 cores, a 290-token row) a step
training the top 15 layers spends 0.36 of its 1.61 s in the 15 below; with the top 8, 0.52 of 1.34 s.

The layout trick: each example's tokens own a run of rows in the store (`offsets`), and a micro-batch's store
rows come from collating the examples with those row numbers as their token ids (`batch_index`), through the
same `make_batch` as the real batch, so packing and padding place them exactly where the real tokens are.
Padding reads a row of zeros (`sentinel`), which no real token attends to.

A pure speed choice, decided where the run is set up (`frozen_prefix_cache`): it changes no result beyond
floating-point rounding (tests/modeling/test_frozen_prefix.py compares losses and gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from tunesmith.modeling.batches import make_batch

MAX_CACHE_BYTES = 2 * 1024**3
"""The store's limit: a run whose frozen outputs would take more (tokens x width x 4 bytes) trains without it."""


def store_fits(lengths: np.ndarray, width: int) -> bool:
    """Whether the store for examples of these lengths (one fp32 row a token, and the padding row) stays within
    MAX_CACHE_BYTES."""
    return (int(np.sum(lengths)) + 1) * width * 4 <= MAX_CACHE_BYTES


class FrozenPrefixCache:
    """The output of the frozen layers `layers[:boundary]` for every training token, filled as examples are
    first seen (`applied`), and used when all of a micro-batch's tokens are in."""

    def __init__(self, layers: Sequence[torch.nn.Module], boundary: int, lengths: np.ndarray, width: int):
        self.layers, self.boundary, self.width = layers, boundary, width
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
        self.sentinel = int(self.offsets[-1])
        """The store's last row: zeros, read by padding."""
        self.store: torch.Tensor | None = None
        """(tokens + 1, width) on the CPU, made at the first capture in the dtype the layer returns."""
        self.filled = torch.zeros(self.sentinel + 1, dtype=torch.bool)
        self.filled[-1] = True
        self.skipped_batches = 0
        """Micro-batches that ran without the frozen layers (stated in the train summary)."""
        self.usable = True
        """False once a layer returned a tuple (older decoder layers): the pass-throughs return a tensor, which
        the model's loop would then index as a tuple, so the cache stays unused."""

    def summary(self) -> dict:
        """For `train_summary.json`: what was kept and how often it stood in for the frozen layers."""
        size = 0 if self.store is None else self.store.numel() * self.store.element_size()
        return {"frozen_layers": self.boundary, "tokens": self.sentinel, "mib": round(size / 2**20, 1),
                "batches_skipped": self.skipped_batches}

    def batch_index(self, indices: Sequence[int], packing: bool, max_row_tokens: int,
                    padding_side: str = "right") -> torch.Tensor:
        """The store rows of a micro-batch of the training examples `indices`, shaped as its input_ids."""
        examples = []
        for i in indices:
            rows = np.arange(self.offsets[i], self.offsets[i + 1])
            examples.append({"input_ids": rows, "labels": rows})
        return make_batch(examples, packing, max_row_tokens, self.sentinel, padding_side)["input_ids"]

    @contextmanager
    def applied(self, cache_index: torch.Tensor):
        """A forward inside this skips the frozen layers when every token of `cache_index` is kept, and keeps
        their output otherwise."""
        flat = cache_index.reshape(-1).cpu()
        if not self.usable:
            yield
            return
        if self.store is not None and bool(self.filled[flat].all()):
            kept = self.store[flat].reshape(*cache_index.shape, self.width)
            with replaced_layers(self.layers[:self.boundary], kept.to(cache_index.device)):
                yield
            self.skipped_batches += 1
            return
        handle = self.layers[self.boundary - 1].register_forward_hook(self._keep(flat))
        try:
            yield
        finally:
            handle.remove()

    def _keep(self, flat: torch.Tensor):
        real = flat != self.sentinel

        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                self.usable = False
                return
            states = output.detach()
            if self.store is None:
                self.store = torch.zeros((self.sentinel + 1, self.width), dtype=states.dtype)
            self.store[flat[real]] = states.reshape(-1, self.width)[real.to(states.device)].to("cpu", self.store.dtype)
            self.filled[flat[real]] = True

        return hook


@contextmanager
def replaced_layers(frozen: Sequence[torch.nn.Module], kept: torch.Tensor):
    """The frozen layers' forwards replaced for one call: pass-throughs, the last returning `kept`."""
    def pass_through(hidden_states, *args, **kwargs):
        return hidden_states

    def kept_states(hidden_states, *args, **kwargs):
        return kept.to(hidden_states.dtype)

    for layer in frozen[:-1]:
        layer.forward = pass_through
    frozen[-1].forward = kept_states
    try:
        yield
    finally:
        for layer in frozen:
            del layer.forward


def frozen_boundary(layers: Sequence[torch.nn.Module], embeddings: torch.nn.Module) -> int:
    """How many decoder layers at the bottom hold no trainable weight (0 when the embeddings train, or the first
    layer does): the layers the cache can stand in for."""
    if any(p.requires_grad for p in embeddings.parameters()):
        return 0
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return 0  # nothing trains in the decoder: no layer above the cache to feed


def random_in_training(config) -> list[str]:
    """The model config's dropout settings above zero (a frozen layer with dropout is not the same every epoch)."""
    return sorted(name for name, value in vars(config).items()
                  if ("dropout" in name or "pdrop" in name) and isinstance(value, float) and value > 0)
