"""Checkpoints: `checkpoints/step-N/` to resume from, and `checkpoints/best/` with the best weights so far.

A checkpoint holds the trainable weights (`trainable.safetensors`), the optimizer (`optimizer.pt`), the
`trainer_state.json` (TrainState plus every process's RNG state), the `fingerprint.json` of the settings it was
trained with (fingerprint.py) and the metrics so far. Each folder is written whole under a temporary name and
renamed; the `latest` pointer is written after it, so a run killed at any moment leaves the previous checkpoint
loadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TrainingError
from tunesmith.runs import RunPaths, atomic_dir, atomic_write_json, atomic_write_text
from tunesmith.train.fingerprint import FINGERPRINT_FILE, check_fingerprint
from tunesmith.train.state import TrainState

LATEST = "latest"
"""The file in `checkpoints/` naming the last complete checkpoint folder."""
BEST = "best"
"""The folder in `checkpoints/` with the weights of the best test loss so far and its `best.json`."""


@contextlib.contextmanager
def writing(what: str, keep_note: str):
    """Turn a failed write (disk full, permissions) into a TrainingError that says what survived."""
    try:
        yield
    except OSError as e:
        raise TrainingError(f"could not write {what}: {e.strerror or e}; {keep_note}") from None


def checkpoint_note(paths: RunPaths) -> str:
    """What an error message says survived: the last good checkpoint, if any."""
    last = latest_checkpoint(paths)
    return f"last good checkpoint: {last}" if last else "no checkpoint was written"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes (all of a full model, the adapters of LoRA), ready for safetensors."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, folder: Path) -> None:
    """Put a checkpoint's trainable weights into `model`.

    Raises:
        TrainingError: the checkpoint holds weights this model does not have.
    """
    from safetensors.torch import load_file

    state = load_file(str(folder / "trainable.safetensors"))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise TrainingError(f"{folder}: checkpoint does not match this model (unexpected "
                            f"{result.unexpected_keys[:3]}); was training.method or model.name changed?")


def latest_checkpoint(paths: RunPaths) -> Path | None:
    """The last complete checkpoint: the `latest` pointer is written only after its folder is whole."""
    pointer = paths.checkpoints / LATEST
    if not pointer.is_file():
        return None
    folder = paths.checkpoints / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / "trainer_state.json").is_file() else None


def rng_state() -> dict:
    """This process's random generators (Python, NumPy, torch, CUDA), as JSON-ready lists."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = [kind, keys.tolist(), pos, has_gauss, gauss]
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by `rng_state` (dropout continues as in an uninterrupted run)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(paths: RunPaths, step: int, model, optimizer, state: TrainState, rng_states: list[dict],
                    keep: int, fingerprint: dict | None = None) -> Path:
    """Write `checkpoints/step-N/` whole, then point `latest` at it, then drop checkpoints beyond `keep`.

    `fingerprint` (fingerprint.py) goes in as `fingerprint.json`, so a resume can check the settings it continues.

    Raises:
        TrainingError: the disk is full or not writable; the previous checkpoint is untouched.
    """
    from safetensors.torch import save_file

    previous = latest_checkpoint(paths)
    keep_note = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint was written"
    folder = paths.checkpoints / f"step-{step}"
    with writing(f"checkpoint {folder}", keep_note):
        with atomic_dir(folder) as tmp:
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            # straight into the file: the folder is renamed whole when complete, and a buffer copied to disk
            # would hold the AdamW state twice in host memory (two fp32 copies of every trainable weight)
            with open(tmp / "optimizer.pt", "wb") as file:
                torch.save(optimizer.state_dict(), file)
                file.flush()
                os.fsync(file.fileno())  # as durable as the files written by atomic_write_bytes
            atomic_write_json(tmp / "trainer_state.json", state.to_json(rng_states))
            if fingerprint is not None:
                atomic_write_json(tmp / FINGERPRINT_FILE, fingerprint)
            if paths.metrics.is_file():
                shutil.copyfile(paths.metrics, tmp / "metrics.jsonl")
        atomic_write_text(paths.checkpoints / LATEST, folder.name)
    periodic = sorted((p for p in paths.checkpoints.glob("step-*") if p.is_dir()),
                      key=lambda p: int(p.name.split("-")[1]))
    for old in periodic[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path, model, optimizer, device: torch.device, world_size: int,
                    fingerprint: dict | None = None) -> tuple[TrainState, list[dict]]:
    """Load a checkpoint's weights and optimizer into `model` and `optimizer`; returns (state, RNG states).

    With `fingerprint` (this run's, fingerprint.py) the checkpoint's own is compared first, before any weight is
    loaded; a checkpoint without one (older tunesmith) is checked for the number of processes alone.

    Raises:
        TrainingError: settings that change the run's course differ (every one named), the checkpoint does not
            fit this model, or it was saved with another number of processes.
    """
    if fingerprint is not None:
        check_fingerprint(folder, fingerprint)
    load_trainable_state(model, folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    saved = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    state, rng_states = TrainState.from_json(saved, world_size)
    if world_size != state.world_size:
        raise TrainingError(f"{folder}: saved with {state.world_size} processes; resume with the same "
                            f"--nproc so the data order continues exactly")
    return state, rng_states


def save_best(paths: RunPaths, model, step: int, test_loss: float) -> None:
    """Keep the weights of a new best test loss in `checkpoints/best/` (replaced whole), with its `best.json`."""
    from safetensors.torch import save_file

    with writing(f"best checkpoint in {paths.checkpoints}", checkpoint_note(paths)):
        with atomic_dir(paths.checkpoints / BEST) as tmp:
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            atomic_write_json(tmp / "best.json", {"step": step, "test_loss": test_loss})


def best_checkpoint(paths: RunPaths, step: int) -> Path | None:
    """`checkpoints/best/` when it holds the weights of `step` (a resumed run may have left an older one)."""
    best_file = paths.checkpoints / BEST / "best.json"
    if best_file.is_file() and json.loads(best_file.read_text(encoding="utf-8"))["step"] == step:
        return best_file.parent
    return None


def drop_best(paths: RunPaths) -> None:
    """Remove `checkpoints/best/`: the final weights are the best, so the copy is stale."""
    shutil.rmtree(paths.checkpoints / BEST, ignore_errors=True)
