"""The fingerprint of a run's course: every setting that decides which update step N makes, kept with each checkpoint.

A resumed run continues exactly only when the model, the prepared data, the batches (size, accumulation,
processes, packing), the data order (seed) and each step's update (learning rate, schedule, optimizer, precision)
are those the checkpoint was trained with. Each checkpoint keeps them as `fingerprint.json`; a resume compares
them with the settings now and refuses, naming every key that differs, before any weight is loaded.

What may change on resume (not compared), and why:
- `training.max_steps`, `training.epochs`: where the run ends. Extending (or shortening) a run is what
  `--resume --set training.max_steps=N` is for; the steps already taken are untouched. The learning rate is a
  pure function of the step and the run's length, so under `linear` or `cosine` (or a `warmup_ratio` warmup) a
  new length changes the rate of the steps still to come: the resume goes ahead and says so (`resume_notes`),
  since the run then matches no uninterrupted run; under `constant` with `warmup_steps` it stays exact.
- `save_every_steps`, `keep_checkpoints`, `eval_every_steps`, `log_every_steps`, `early_stopping_patience`:
  when the run writes, tests or stops, never what a step computes.
- `time_budget`: where the run ends, like `max_steps`. The length it decided is kept in the checkpoint's state
  (budget.py): a resume with the same budget takes the steps still planned, with another one it times the next
  steps and fits the budget left. Until the length is decided the fingerprint's schedule has no `total_steps`.
- `num_threads`, `gradient_checkpointing`: how fast or in how much memory a step runs, not its result.
- `merge_lora`, `output.*`, `eval.*`: what is saved and done after training.
Every setting of the preparation (model section, template, tokenization, split, the data files' content) is in
the prepared data's hash, so it is compared as `data.config_hash`.

Checkpoints written before fingerprints existed have none: they resume with the processes check alone, and a note.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tunesmith.config import (DataConfig, ModelConfig, SplitConfig, TemplateConfig, TokenizationConfig,
                              TrainingConfig, learning_rate)
from tunesmith.errors import TrainingError
from tunesmith.prepare.manifest import Manifest
from tunesmith.runs import file_sha256
from tunesmith.train.schedule import StepPlan, lr_at, with_default_learning_rate

FINGERPRINT_FILE = "fingerprint.json"
"""Beside `trainer_state.json` in each checkpoint folder."""
FINGERPRINT_VERSION = 1

LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
"""Compared only for LoRA and QLoRA: a full finetune ignores them."""
TRAINING_KEYS = ("method", "batch_size", "gradient_accumulation_steps", "seed", "packing", "lr_scheduler",
                 "warmup_steps", "optimizer", "weight_decay", "max_grad_norm", "trainable_layers")
"""Training settings compared as they are; the learning rate, warmup ratio and precision are compared resolved."""


def trajectory(model_cfg: ModelConfig, training: TrainingConfig, data: dict, world_size: int,
               precision: str | None) -> dict:
    """The compared settings, keyed as in the config (`training.batch_size`), plus `processes`.

    `data` holds the prepared data's identity (`data_identity`); `precision` is the resolved one, or None where
    it is not known yet (it is then left out, as are keys `data` lacks).
    """
    keys = {"model.name": model_cfg.name, **data, "processes": world_size,
            "training.learning_rate": learning_rate(training),
            # the ratio is ignored when warmup_steps is set, so changing it then changes nothing
            "training.warmup_ratio": training.warmup_ratio if training.warmup_steps is None else None}
    names = TRAINING_KEYS + (LORA_KEYS if training.method != "full" else ())
    keys.update({f"training.{name}": getattr(training, name) for name in names})
    if precision is not None:
        keys["training.precision"] = precision
    return keys


def data_identity(manifest: Manifest) -> dict:
    """What the prepared data was made from (the preparation settings' hash, the files' content) and its length."""
    return {"data.config_hash": manifest.config_hash, "data.source_sha256": manifest.source.sha256,
            "data.test_source_sha256": manifest.test_source.sha256 if manifest.test_source else None,
            "tokenization.max_length": manifest.max_length}


def run_fingerprint(model_cfg: ModelConfig, training: TrainingConfig, manifest: Manifest, world_size: int,
                    precision: str, plan: StepPlan) -> dict:
    """What `fingerprint.json` holds: the compared `trajectory`, and the `schedule` only notes are drawn from."""
    return {"version": FINGERPRINT_VERSION,
            "trajectory": trajectory(model_cfg, training, data_identity(manifest), world_size, precision),
            # a time budget's length is decided after the first steps (the loop fills it in then)
            "schedule": {"total_steps": None if training.time_budget else plan.total_steps,
                         "warmup_steps": plan.warmup_steps,
                         "peak_lr": plan.peak_lr, "lr_scheduler": plan.schedule}}


def config_trajectory(model_cfg: ModelConfig, data: DataConfig, template: TemplateConfig,
                      tokenization: TokenizationConfig, split: SplitConfig, training: TrainingConfig,
                      world_size: int) -> dict:
    """The compared settings as far as a config tells them before preparing (no tokenizer, no device): for
    choosing which run `--resume` continues. The resolved `max_length` follows from the preparation hash, and
    an `auto` precision from the machine, so they are left to the loop's own check."""
    from tunesmith.prepare.pipeline import preparation_hash

    identity = {"data.config_hash": preparation_hash(model_cfg, data, template, tokenization, split)}
    for key, path in (("data.source_sha256", data.path), ("data.test_source_sha256", data.test_path)):
        if path is None or Path(path).exists():
            identity[key] = file_sha256(path) if path else None
    precision = None if training.precision == "auto" else training.precision
    return trajectory(model_cfg, with_default_learning_rate(training, model_cfg), identity, world_size, precision)


def read_fingerprint(folder: Path) -> dict | None:
    """A checkpoint folder's fingerprint; None for a checkpoint from before fingerprints (or an unreadable one)."""
    try:
        saved = json.loads((folder / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("trajectory"), dict) else None


def latest_fingerprint(checkpoints: Path) -> dict | None:
    """The fingerprint of the checkpoint the `latest` pointer in `checkpoints/` names (read without torch)."""
    pointer = checkpoints / "latest"
    try:
        return read_fingerprint(checkpoints / pointer.read_text(encoding="utf-8").strip())
    except OSError:
        return None


def _shown(value) -> str:
    """A value as an error message names it: hashes cut to 12 digits (enough to tell two apart)."""
    if value is None:
        return "unset"
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{17,}", value):
        return value[:12] + "…"
    return str(value)


def differences(saved: dict, now: dict) -> list[str]:
    """`key: checkpoint A, now B` for every compared key both sides know whose values differ.

    >>> differences({"training.batch_size": 8, "training.seed": 1}, {"training.batch_size": 4, "training.seed": 1})
    ['training.batch_size: checkpoint 8, now 4']
    """
    return [f"{key}: checkpoint {_shown(saved[key])}, now {_shown(value)}" for key, value in now.items()
            if key in saved and saved[key] != value]


def check_fingerprint(folder: Path, now: dict) -> None:
    """Refuse to resume `folder` with settings that would change the run's course (`now`: a `run_fingerprint`).

    A checkpoint without a fingerprint passes (older tunesmith); `resume_notes` says so.

    Raises:
        TrainingError: naming every key that differs, and the two ways on.
    """
    saved = read_fingerprint(folder)
    if saved is None:
        return
    found = differences(saved["trajectory"], now["trajectory"])
    if found:
        raise TrainingError(f"{folder}: --resume with settings that change the run's course: {'; '.join(found)}; "
                            f"restore them to continue this run, or train without --resume under another "
                            f"output.name for a new run (in this run folder it starts over, deleting these "
                            f"checkpoints)")


def resume_notes(folder: Path, now: dict, step: int) -> list[str]:
    """What a resume from `folder` at `step` should tell the user: no fingerprint to check, or a new run length
    that changes the learning rate of the steps still to come."""
    saved = read_fingerprint(folder)
    if saved is None:
        return [f"{folder}: checkpoint without a fingerprint (older tunesmith): only the number of processes was "
                f"checked; resume it with the settings it was trained with"]
    before, after = saved.get("schedule", {}), now["schedule"]
    if before.get("total_steps") in (None, after["total_steps"]) or after["total_steps"] is None:
        return []
    old = dict(peak=before["peak_lr"], total_steps=before["total_steps"], warmup=before["warmup_steps"],
               schedule=before["lr_scheduler"])
    new = dict(peak=after["peak_lr"], total_steps=after["total_steps"], warmup=after["warmup_steps"],
               schedule=after["lr_scheduler"])
    if all(lr_at(s, **old) == lr_at(s, **new) for s in range(step, min(old["total_steps"], new["total_steps"]))):
        return []
    return [f"{folder}: the run now lasts {new['total_steps']} steps instead of {old['total_steps']}: the "
            f"{new['schedule']} learning rate from step {step + 1} on follows the new length, so the result matches "
            f"no uninterrupted run (lr_scheduler=constant with warmup_steps keeps a longer run exact)"]
