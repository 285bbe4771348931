"""Checkpoints: `checkpoints/step-N/` to resume from, and `checkpoints/best/` with the best weights so far.

A checkpoint holds the trainable weights (`trainable.safetensors`), the optimizer (`optimizer.pt`), the
`trainer_state.json` (TrainState plus every process's RNG state), the `fingerprint.json` of the settings it was
trained with (fingerprint.py) and the metrics so far. Each folder is written whole under a temporary name and
renamed; the `latest` pointer is written after it, so a run killed at any moment leaves the previous checkpoint
loadable.

Under FSDP (sharding.py) the weights and optimizer are sharded, and so is the checkpoint: every process writes
its shards with `torch.distributed.checkpoint` (DCP) into `sharded/` of the same temporary folder, which the main
process renames when all are written, with the same `trainer_state.json` and the rest beside it (the run folder
must be on a filesystem every process sees). DCP loads into any sharding of the same parameters, unsharded ones
too, so a sharded checkpoint resumes under DDP as well; a resume on another number of processes is refused
before (fingerprint.py), since the data order would change. An unsharded checkpoint does not resume under FSDP.
`checkpoints/best/` is always whole weights, gathered when sharded.
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
from tunesmith.train.sharding import full_state_dict, is_sharded, load_full_state_dict
from tunesmith.train.state import TrainState

LATEST = "latest"
"""The file in `checkpoints/` naming the last complete checkpoint folder."""
BEST = "best"
"""The folder in `checkpoints/` with the weights of the best test loss so far and its `best.json`."""
SHARDED = "sharded"
"""The DCP folder in a checkpoint of a sharded (FSDP) run, in place of `trainable.safetensors` and `optimizer.pt`."""


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
    """The parameters training changes (all of a full model, the adapters of LoRA), ready for safetensors.

    A sharded model's are gathered whole onto the main process ({} on the others; every process must call it).
    """
    if is_sharded(model):
        return full_state_dict(model, trainable_only=True)
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, folder: Path) -> None:
    """Put a checkpoint's trainable weights into `model`.

    Raises:
        TrainingError: the checkpoint holds weights this model does not have.
    """
    from safetensors.torch import load_file

    state = load_file(str(folder / "trainable.safetensors"))
    if is_sharded(model):
        unexpected = set(state) - {name for name, _ in model.named_parameters()}
        load_full_state_dict(model, {k: v for k, v in state.items() if k not in unexpected})
    else:
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise TrainingError(f"{folder}: checkpoint does not match this model (unexpected "
                            f"{sorted(unexpected)[:3]}); was training.method or model.name changed?")


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
                    keep: int, fingerprint: dict | None = None, is_main: bool = True) -> Path:
    """Write `checkpoints/step-N/` whole, then point `latest` at it, then drop checkpoints beyond `keep`.

    `fingerprint` (fingerprint.py) goes in as `fingerprint.json`, so a resume can check the settings it continues.
    The main process writes it; a sharded model's processes all call this, each writing its own shards, and the
    main one writes the rest (`is_main`).

    Raises:
        TrainingError: the disk is full or not writable; the previous checkpoint is untouched.
    """
    folder = paths.checkpoints / f"step-{step}"
    if not is_main:
        save_shards(Path(shared_from_main(None)), model, optimizer)
        return folder
    previous = latest_checkpoint(paths)
    keep_note = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint was written"
    with writing(f"checkpoint {folder}", keep_note):
        with atomic_dir(folder) as tmp:
            if is_sharded(model):
                save_shards(Path(shared_from_main(str(tmp))), model, optimizer)
            else:
                save_whole(tmp, model, optimizer)
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


def save_whole(tmp: Path, model, optimizer) -> None:
    """The trainable weights and the optimizer of an unsharded model, into the checkpoint folder being written."""
    from safetensors.torch import save_file

    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    # straight into the file: the folder is renamed whole when complete, and a buffer copied to disk would hold
    # the AdamW state twice in host memory (two fp32 copies of every trainable weight)
    with open(tmp / "optimizer.pt", "wb") as file:
        torch.save(optimizer.state_dict(), file)
        file.flush()
        os.fsync(file.fileno())  # as durable as the files written by atomic_write_bytes


def shared_from_main(value):
    """The main process's `value` in every process (the temporary folder all of them write into)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def dcp_state(model, optimizer) -> dict:
    """What DCP saves and loads of a (sharded or plain) model and its optimizer: the trainable weights and their
    optimizer state, keyed by parameter name, so any sharding of the same model maps onto them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, moments = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": weights, "optimizer": moments}


def save_shards(tmp: Path, model, optimizer) -> None:
    """This process's shards of the weights and optimizer into `tmp/sharded/` (DCP; every process calls it)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(dcp_state(model, optimizer), checkpoint_id=str(tmp / SHARDED))


def load_shards(folder: Path, model, optimizer) -> None:
    """A sharded checkpoint's weights and optimizer into `model` and `optimizer`, resharded to how they are split
    now (every process calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = dcp_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder / SHARDED))
    # not strict: LoRA's frozen base is not in the checkpoint, it comes from the model file
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))


def load_checkpoint(folder: Path, model, optimizer, device: torch.device, world_size: int,
                    fingerprint: dict | None = None) -> tuple[TrainState, list[dict]]:
    """Load a checkpoint's weights and optimizer into `model` and `optimizer`; returns (state, RNG states).

    With `fingerprint` (this run's, fingerprint.py) the checkpoint's own is compared first, before any weight is
    loaded; a checkpoint without one (older tunesmith) is checked for the number of processes alone.

    Raises:
        TrainingError: settings that change the run's course differ (every one named), the checkpoint does not
            fit this model, it was saved with another number of processes, or it is unsharded and this run
            shards the model.
    """
    if fingerprint is not None:
        check_fingerprint(folder, fingerprint)
    if (folder / SHARDED).is_dir():
        load_shards(folder, model, optimizer)
    elif is_sharded(model):
        raise TrainingError(f"{folder}: written without sharding, and this run shards the model (FSDP); resume "
                            f"with --set training.distributed=ddp, or train without --resume")
    else:
        load_trainable_state(model, folder)
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    saved = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    state, rng_states = TrainState.from_json(saved, world_size)
    if world_size != state.world_size:
        raise TrainingError(f"{folder}: saved with {state.world_size} processes; resume with the same "
                            f"--nproc so the data order continues exactly")
    return state, rng_states


def save_best(paths: RunPaths, model, step: int, test_loss: float, is_main: bool = True) -> None:
    """Keep the weights of a new best test loss in `checkpoints/best/` (replaced whole), with its `best.json`.

    The main process writes; a sharded model's processes all call this, to gather its weights (`is_main`).
    """
    from safetensors.torch import save_file

    if not is_main:
        if is_sharded(model):
            trainable_state(model)
        return
    weights = trainable_state(model)
    with writing(f"best checkpoint in {paths.checkpoints}", checkpoint_note(paths)):
        with atomic_dir(paths.checkpoints / BEST) as tmp:
            save_file(weights, str(tmp / "trainable.safetensors"))
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
