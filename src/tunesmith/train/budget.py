"""`training.time_budget`: measure the first steps, then fix the run's length so its schedule ends at the budget.

The length of a run decides its learning-rate schedule (warmup share, cosine or linear decay to zero), so a run
cut off at a deadline would end at a high rate, mid-schedule. Instead the run first trains a few steps under a
provisional plan while timing them (the probe), then sets the number of steps once: the budget left, less the
test-loss evaluations still to come, divided by the time a step takes. From then on the learning rate is again a
pure function of the step and the run completes its schedule.

A few steps predict the rest badly in both directions: on the tiny model the probe's 0.03 s steps became 0.05 s
once logging and evaluations ran between them (a 20 s budget took 33 s), and on long varied rows the first steps
were a third slower than later ones (a 9-minute run ended 19% early). So the length is checked again at a
quarter, at half and at three quarters of the budget (`CORRECT_AT`) against everything timed since the last
check, steps and evaluations alike, and changed when it is off by more than `CORRECT_ABOVE`: the schedule bends
a little there, and the run still ends its schedule at the budget.

Pure functions of figures the loop hands in, and one small timer whose clock can be replaced (tests use a fake).

- The first step after a (re)start is left out of the measure: it pays for allocation and warm caches.
- A step's time is predicted per token (steps differ in length with packing), from the tokens an average step
  holds.
- A test-loss evaluation is timed once, at the end of the probe (its best copy written too), and every
  evaluation to come is counted at that cost; `EVAL_COST_SHARE` predicts it when no measure is given.
- A correction is measured on the wall clock between two checks: training seconds (all but the evaluations: the
  logging, progress bar and checkpoints between steps included) per token, and seconds per evaluation.
- The decision is kept in the checkpoint (`TrainState.budget_steps`), so a resume with the same budget takes the
  steps still planned; with another budget the resumed run measures again and fits the steps to what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

PROBE_MIN_STEPS = 3
"""Timed steps (after the first) before the length is decided."""
PROBE_MIN_SHARE = 0.01
"""...and at least this share of the budget timed, so fast steps (a GPU, a tiny model) are measured over many."""
PROBE_MAX_SHARE = 0.1
"""Decide after this share of the budget even with fewer timed steps (one step is enough then)."""
EVAL_COST_SHARE = 1 / 3
"""Seconds per token of a test-loss evaluation relative to training: a forward pass without the backward."""
CORRECT_AT = (0.25, 0.5, 0.75)
"""Shares of the budget at which the decided length is checked against the time measured since. The last check
matters where steps speed up late: with `frozen_layer_cache` the first epoch runs the frozen layers and later
ones do not (the demo's steps went from 1.1 s to 0.7 s)."""
CORRECT_ABOVE = 0.02
"""...and changed when the new length differs from it by more than this share (jitter is left alone)."""


@dataclass(frozen=True)
class BudgetDecision:
    """How many steps the budget holds and why; stated in `train_summary.json` and the log."""

    budget_s: float
    total_steps: int
    epochs: float
    step_s: float
    """Predicted seconds of an average step."""
    eval_s: float
    """Predicted seconds of one test-loss evaluation."""
    evaluations: int
    """Test-loss evaluations the remaining run holds (periodic ones and the final one)."""
    measured_steps: int
    """Steps timed to predict `step_s`."""
    fits: bool
    """False when the budget left holds no step beyond the ones already taken (the run then ends one step on)."""
    corrections: tuple[dict, ...] = ()
    """Each change of the length after the first decision: `{"at_step", "from_steps", "to_steps"}`."""

    def why(self) -> str:
        """One sentence for the log and the summary."""
        head = (f"time_budget {self.budget_s:.0f} s: {self.total_steps} steps ({self.epochs:g} epochs) at "
                f"{self.step_s:.2f} s a step (timed over {self.measured_steps} steps)")
        evals = f", with {self.evaluations} test-loss evaluations of ~{self.eval_s:.1f} s" if self.evaluations else ""
        tail = "" if self.fits else "; the budget was spent before the measurement ended, so the run stops a step on"
        fixes = "".join(f"; at step {c['at_step']} the time measured since set {c['from_steps']} steps to "
                        f"{c['to_steps']}" for c in self.corrections)
        return f"{head}{evals}, so the learning-rate schedule ends at the budget{fixes}{tail}"

    def to_json(self) -> dict:
        return {**asdict(self), "corrections": list(self.corrections), "why": self.why()}

    @classmethod
    def from_json(cls, saved: dict) -> BudgetDecision:
        """The decision a checkpoint kept (`to_json`); "why" is derived, and checkpoints from before corrections
        have none."""
        fields = {key: value for key, value in saved.items() if key != "why"}
        return cls(**{**fields, "corrections": tuple(saved.get("corrections", ()))})


def probe_finished(timed_steps: int, timed_s: float, budget_s: float) -> bool:
    """Whether the steps timed so far are enough to decide the run's length.

    >>> probe_finished(3, 7.0, 600), probe_finished(3, 1.0, 600), probe_finished(1, 61.0, 600)
    (True, False, True)
    """
    if timed_steps >= PROBE_MIN_STEPS and timed_s >= PROBE_MIN_SHARE * budget_s:
        return True
    return timed_steps >= 1 and timed_s >= PROBE_MAX_SHARE * budget_s


def evaluations_between(done_steps: int, total_steps: int, eval_every: int | None, has_test: bool) -> int:
    """Test-loss evaluations after step `done_steps` up to the end: one every `eval_every` steps before the last,
    and the final one (the loop's rule: the last step's evaluation is the final one).

    >>> evaluations_between(0, 100, 25, True), evaluations_between(30, 100, 25, True), evaluations_between(0, 9, None, True)
    (4, 3, 1)
    """
    if not has_test:
        return 0
    periodic = 0
    if eval_every:
        periodic = (total_steps - 1) // eval_every - done_steps // eval_every
    return max(0, periodic) + 1


def decide_steps(budget_s: float, elapsed_s: float, done_steps: int, s_per_token: float, tokens_per_step: float,
                 test_tokens: int, eval_every: int | None, epoch_steps: int, measured_steps: int,
                 measured_eval_s: float | None = None) -> BudgetDecision:
    """The run's total steps so that the time so far, the steps still to take and their evaluations end at
    `budget_s`.

    `s_per_token` is the timed training seconds per token, `tokens_per_step` an average step's tokens (all
    processes), `test_tokens` those of the test split (0 without one), `measured_eval_s` the seconds one
    evaluation took (the probe's), else predicted from the test tokens.

    >>> d = decide_steps(100.0, 10.0, 4, 0.01, 100.0, 0, None, 50, 3)
    >>> d.total_steps, d.fits
    (94, True)
    """
    step_s = s_per_token * tokens_per_step
    eval_s = s_per_token * EVAL_COST_SHARE * test_tokens if measured_eval_s is None else measured_eval_s
    left_s = budget_s - elapsed_s

    def cost(total: int) -> float:
        evaluations = evaluations_between(done_steps, total, eval_every, test_tokens > 0)
        return (total - done_steps) * step_s + evaluations * eval_s

    # the cost grows with the steps (evaluations only add), so the first overshoot bounds the search
    total = done_steps + max(1, int(left_s / max(step_s, 1e-12)))
    while total > done_steps + 1 and cost(total) > left_s:
        total -= 1
    fits = cost(total) <= left_s
    evaluations = evaluations_between(done_steps, total, eval_every, test_tokens > 0)
    return BudgetDecision(budget_s=budget_s, total_steps=total, epochs=round(total / epoch_steps, 2),
                          step_s=round(step_s, 4), eval_s=round(eval_s, 3), evaluations=evaluations,
                          measured_steps=measured_steps, fits=fits)


def correction_times(budget_s: float, elapsed_s: float) -> list[float]:
    """The run's elapsed seconds at which the length is checked again: those of `CORRECT_AT` not yet passed.

    >>> correction_times(600, 10), correction_times(600, 200), correction_times(600, 460)
    ([150.0, 300.0, 450.0], [300.0, 450.0], [])
    """
    return [share * budget_s for share in CORRECT_AT if share * budget_s > elapsed_s]


@dataclass(frozen=True)
class RunMark:
    """Where a run stood at a moment: the figures between two marks are the correction's measure."""

    elapsed_s: float
    eval_s: float
    """Seconds of test-loss evaluations so far."""
    tokens_seen: int
    step: int


def measured_rates(start: RunMark, end: RunMark, eval_every: int | None) -> tuple[float, float | None]:
    """Training seconds per token and seconds per periodic evaluation (None when none ran) between two marks.

    >>> measured_rates(RunMark(10.0, 1.0, 1000, 10), RunMark(40.0, 7.0, 3000, 30), 10)
    (0.012, 3.0)
    """
    evaluations = (end.step // eval_every - start.step // eval_every) if eval_every else 0
    eval_s = end.eval_s - start.eval_s
    train_s = end.elapsed_s - start.elapsed_s - eval_s
    per_eval = eval_s / evaluations if evaluations > 0 else None
    return train_s / max(end.tokens_seen - start.tokens_seen, 1), per_eval


def corrected(current: BudgetDecision, new: BudgetDecision, at_step: int) -> BudgetDecision | None:
    """`new` with the correction recorded, when its length differs from `current`'s by more than `CORRECT_ABOVE`
    (and at least two steps); None to keep `current`.

    >>> old = decide_steps(100.0, 10.0, 4, 0.01, 100.0, 0, None, 50, 3)
    >>> corrected(old, decide_steps(100.0, 50.0, 40, 0.02, 100.0, 0, None, 50, 36), 40).total_steps
    65
    >>> corrected(old, old, 40) is None
    True
    """
    if abs(new.total_steps - current.total_steps) <= max(2, CORRECT_ABOVE * current.total_steps):
        return None
    change = {"at_step": at_step, "from_steps": current.total_steps, "to_steps": new.total_steps}
    return replace(new, corrections=(*current.corrections, change))


class StepTimer:
    """Times the probe: called after each step with the run's training seconds (evaluations left out) and the
    tokens seen; the first call only sets the start, so the first step is not measured."""

    def __init__(self, budget_s: float, now: Callable[[], float] | None = None):
        self.budget_s = budget_s
        self.now = now or (lambda: time.perf_counter())  # looked up at each call, so tests can fake the clock
        self.start: tuple[float, int, int] | None = None
        self.last: tuple[float, int, int] | None = None

    def tick(self, step: int, tokens_seen: int, eval_s: float) -> bool:
        """Record the end of step `step`; True once the probe has timed enough (`probe_finished`)."""
        mark = (self.now() - eval_s, tokens_seen, step)
        if self.start is None:
            self.start = mark
            return False
        self.last = mark
        return probe_finished(self.timed_steps, mark[0] - self.start[0], self.budget_s)

    @property
    def timed_steps(self) -> int:
        return 0 if self.last is None else self.last[2] - self.start[2]

    def seconds_per_token(self) -> float:
        """Training seconds per token over the timed steps."""
        (t0, tokens0, _), (t1, tokens1, _) = self.start, self.last
        return (t1 - t0) / max(tokens1 - tokens0, 1)
