"""What a training run knows about itself: the state a checkpoint carries, the run's clock, and its result."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class TrainState:
    """Where training stands after `step` optimizer steps; saved as a checkpoint's `trainer_state.json`.

    The field order is the key order of that file (with the processes' RNG states added as `rng`), so older
    checkpoints load as they are.
    """

    step: int = 0
    """Optimizer steps done."""
    train_loss: float | None = None
    """Loss of the last step (token mean over the whole step)."""
    tokens_seen: int = 0
    """Non-padding tokens trained on, all processes."""
    loss_tokens: int = 0
    """Tokens that carried a loss, all processes."""
    elapsed_s: float = 0.0
    """Wall time of the run before this process started (resumed runs keep counting)."""
    eval_s: float = 0.0
    """Part of the wall time spent on test-loss evaluations, kept out of tokens/s."""
    best_test_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    """Evaluations since the best test loss; early stopping counts these."""
    world_size: int = 1
    """Processes the run trains with; a resume must use as many, or the data order would differ."""
    budget: dict | None = None
    """How `training.time_budget` set the run's length after timing the first steps (budget.py's
    `BudgetDecision`); a resume with the same budget keeps it, one with another budget decides anew."""

    def to_json(self, rng_states: list[dict]) -> dict:
        """The `trainer_state.json` of a checkpoint: these fields, then each process's RNG state (`budget` only in
        a budgeted run, so other runs write the file as they always did)."""
        fields_now = {key: value for key, value in asdict(self).items() if key != "budget" or value is not None}
        return {**fields_now, "rng": rng_states}

    @classmethod
    def from_json(cls, saved: dict, world_size: int) -> tuple[TrainState, list[dict]]:
        """(state, RNG states) from a `trainer_state.json`; keys it lacks keep their fresh-run values."""
        known = {f.name for f in fields(cls)}
        state = cls(world_size=world_size)
        for key, value in saved.items():
            if key in known:
                setattr(state, key, value)
        return state, saved["rng"]


@dataclass
class Clock:
    """The run's time: since its start (counting time before a resume) and since the last metrics line.

    Evaluation time is moved out of the current window, so tokens/s says how fast training runs, not how often
    it is tested.
    """

    started: float
    """`perf_counter()` at the run's start, shifted back by the time it had run before a resume."""
    window_start: float
    window_tokens: int = 0

    @classmethod
    def start(cls, elapsed_s: float) -> Clock:
        now = time.perf_counter()
        return cls(started=now - elapsed_s, window_start=now)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def skip(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation) out of the current window's tokens/s."""
        self.window_start += seconds

    def close_window(self) -> float:
        """Tokens/s of the window since the last metrics line, and start the next one."""
        now = time.perf_counter()
        rate = round(self.window_tokens / max(now - self.window_start, 1e-9), 1)
        self.window_tokens, self.window_start = 0, now
        return rate


@dataclass(frozen=True)
class TrainResult:
    """Where the trained model is and how training went (the same facts as `train_summary.json`)."""

    model_dir: Path
    merged_dir: Path | None
    steps: int
    final_train_loss: float | None
    final_test_loss: float | None
    best_test_loss: float | None
    summary: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False, compare=False)
    """The trained model in memory (merged when `merge_lora`), so callers can use it without reloading."""
    stopped: bool = False
    """Stopped on request (SIGTERM/SIGINT) before the end: the latest checkpoint holds it, no model was saved."""
