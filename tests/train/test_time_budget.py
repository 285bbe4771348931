"""`training.time_budget`: durations parse, the probe and the length decision on a fake clock, and on the tiny
model a budgeted run ends near its budget with its schedule completed, and resumes with the length it decided."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from tunesmith.config import TrainingConfig, load_config
from tunesmith.errors import ConfigError
from tunesmith.train import loop as train_module
from tunesmith.train.budget import (RunMark, StepTimer, corrected, correction_times, decide_steps,
                                    evaluations_between, measured_rates, probe_finished)
from test_graceful_stop import signal_at_step
from training_runs import train_run


class TestDuration:
    @pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400),
                                              ("1.5m", 90), ("45", 45), (" 2M ", 120)])
    def test_durations_become_seconds(self, text, seconds):
        assert TrainingConfig(time_budget=text).time_budget == seconds

    @pytest.mark.parametrize("text", ["ten minutes", "10x", "m10", "", "-5m"])
    def test_a_bad_duration_is_refused_with_the_way_to_write_it(self, text):
        with pytest.raises(ValidationError, match="time_budget"):
            TrainingConfig(time_budget=text)

    def test_budget_and_max_steps_together_are_refused(self):
        with pytest.raises(ConfigError, match="time_budget and training.max_steps"):
            load_config(None, ["training.time_budget=10m", "training.max_steps=50"])


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TestProbe:
    def test_the_first_step_is_not_timed_and_time_is_per_token(self):
        clock = FakeClock()
        timer = StepTimer(600, now=clock)
        clock.t = 30.0  # a slow first step (allocation): left out
        assert not timer.tick(1, 500, 0.0)
        for step in range(2, 5):
            clock.t += 5.0
            finished = timer.tick(step, 500 * step, 0.0)
        assert finished and timer.timed_steps == 3
        assert timer.seconds_per_token() == pytest.approx(15.0 / 1500)

    def test_evaluation_time_is_left_out_of_the_measure(self):
        clock = FakeClock()
        timer = StepTimer(600, now=clock)
        timer.tick(1, 100, 0.0)
        clock.t = 12.0  # 2 s of steps, 10 s of a test-loss evaluation
        timer.tick(2, 200, 10.0)
        assert timer.seconds_per_token() == pytest.approx(2.0 / 100)

    def test_fast_steps_are_timed_over_a_share_of_the_budget_slow_ones_stop_at_a_tenth(self):
        assert not probe_finished(3, 0.5, 600)  # 3 fast steps are not 1% of 10 minutes
        assert probe_finished(40, 6.0, 600)
        assert probe_finished(1, 60.0, 600) and not probe_finished(1, 59.0, 600)


class TestDecision:
    def test_the_steps_and_their_evaluations_fill_the_budget_left(self):
        # 200 s left, 1 s a step, an evaluation of 300 test tokens at a third of 0.01 s a token = 1 s
        decision = decide_steps(220.0, 20.0, 4, 0.01, 100.0, 300, 25, 50, 3)

        def cost(total):
            return (total - 4) * 1.0 + evaluations_between(4, total, 25, True) * 1.0

        assert cost(decision.total_steps) <= 200.0 < cost(decision.total_steps + 1)
        assert decision.fits and decision.epochs == round(decision.total_steps / 50, 2)
        assert decision.evaluations == evaluations_between(4, decision.total_steps, 25, True)
        assert f"{decision.total_steps} steps" in decision.why() and "schedule ends at the budget" in decision.why()

    def test_a_spent_budget_still_ends_the_schedule_one_step_on_and_says_so(self):
        decision = decide_steps(10.0, 12.0, 4, 0.01, 100.0, 0, None, 50, 1)
        assert decision.total_steps == 5 and not decision.fits and "spent" in decision.why()

    def test_evaluations_follow_the_loop_rule(self):
        # at steps 25, 50, 75 before the end (100), and the final one; none without a test split
        assert evaluations_between(0, 100, 25, True) == 4
        assert evaluations_between(50, 100, 25, True) == 2
        assert evaluations_between(0, 100, 25, False) == 0


class TestCorrection:
    def test_checks_at_a_quarter_half_and_three_quarters_of_the_budget_that_are_still_ahead(self):
        assert correction_times(600, 12.0) == [150.0, 300.0, 450.0]
        assert correction_times(600, 151.0) == [300.0, 450.0]  # a resume past the first check keeps the others
        assert correction_times(600, 450.0) == []

    def test_the_measure_between_checks_counts_logging_and_checkpoints_but_not_evaluations(self):
        # 30 s between the marks, 6 of them in two periodic evaluations (steps 20 and 30), 2000 tokens
        s_per_token, eval_s = measured_rates(RunMark(10.0, 1.0, 1000, 10), RunMark(40.0, 7.0, 3000, 30), 10)
        assert s_per_token == pytest.approx(24.0 / 2000) and eval_s == pytest.approx(3.0)
        assert measured_rates(RunMark(0, 0, 0, 1), RunMark(5, 0, 500, 6), None) == (pytest.approx(0.01), None)

    def test_a_length_off_by_more_than_jitter_is_changed_and_the_change_is_recorded(self):
        first = decide_steps(100.0, 10.0, 4, 0.01, 100.0, 0, None, 50, 3)  # 1 s steps: 94 steps
        slower = decide_steps(100.0, 50.0, 40, 0.02, 100.0, 0, None, 50, 36)  # 2 s steps: 40 + 25
        change = corrected(first, slower, 40)
        assert change.total_steps == 65
        assert change.corrections == ({"at_step": 40, "from_steps": 94, "to_steps": 65},)
        assert "at step 40" in change.why() and "94 steps to 65" in change.why()
        # jitter (one step, or 2% of the length) is left alone, so the schedule does not wobble
        assert corrected(first, decide_steps(100.0, 46.0, 40, 0.0099, 100.0, 0, None, 50, 36), 40) is None


class FakeTime:
    """`time` for the training modules: the clock moves only when a step runs, `step_s` a step, so the budget's
    arithmetic is checked exactly however loaded the machine is."""

    def __init__(self, step_s: float):
        self.t, self.step_s = 1000.0, step_s

    def perf_counter(self) -> float:
        return self.t

    def __getattr__(self, name):
        return getattr(time, name)


def fake_steps(monkeypatch, step_s: float) -> FakeTime:
    """Every optimizer step takes `step_s` on the clock the loop, the run's Clock and the budget read."""
    from tunesmith.train import budget, state

    fake = FakeTime(step_s)
    for module in (train_module, budget, state):
        monkeypatch.setattr(module, "time", fake)
    step_once = train_module.train_step

    def timed_step(run, learner, step, state, clock):
        fake.t += step_s
        return step_once(run, learner, step, state, clock)

    monkeypatch.setattr(train_module, "train_step", timed_step)
    return fake


BUDGET = ["training.max_steps=", "training.lr_scheduler=cosine", "training.warmup_ratio=0.1",
          "training.learning_rate=1e-3", "training.batch_size=2", "training.eval_every_steps=10"]


def check_completed(paths, summary, budget_s: float, tolerance: float) -> None:
    lines = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    decided = summary["time_budget"]
    assert summary["steps"] == summary["total_steps"] == decided["total_steps"] > decided["measured_steps"]
    # the schedule ran to its end: the last step's cosine rate is a sliver of the peak
    last = [line for line in lines if "lr" in line][-1]
    assert last["step"] == decided["total_steps"] and last["lr"] < 0.05 * summary["learning_rate"]
    assert abs(summary["time_s"] - budget_s) <= tolerance * budget_s, (summary["time_s"], decided)


def test_a_budgeted_run_ends_near_the_budget_with_its_schedule_completed(make_run, monkeypatch):
    fake_steps(monkeypatch, 0.1)
    config, paths = make_run(*BUDGET, "training.time_budget=3s")
    result = train_run(config, paths)
    # on the fake clock the only misses are the evaluations' estimate and the rounding to whole steps
    check_completed(paths, result.summary, 3.0, tolerance=0.05)
    decided = result.summary["time_budget"]
    assert decided["measured_steps"] == 3 and decided["step_s"] == pytest.approx(0.1, rel=0.2)


def test_the_probe_times_an_evaluation_and_counts_every_later_one_at_that_cost(make_run, monkeypatch):
    fake = fake_steps(monkeypatch, 0.1)
    evaluate_once = train_module.evaluate_loss

    def slow_evaluation(*args, **kwargs):  # an evaluation costs 3 steps' time, far above a forward pass's share
        fake.t += 0.3
        return evaluate_once(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_loss", slow_evaluation)
    config, paths = make_run(*BUDGET, "training.time_budget=4s")
    result = train_run(config, paths)
    decided = result.summary["time_budget"]
    assert decided["eval_s"] == pytest.approx(0.3) and decided["evaluations"] >= 2
    lines = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    # the probe's evaluation is a metrics line of its own, before the length was decided
    probe = [line for line in lines if "test_loss" in line and "lr" not in line and line["step"] < decided["total_steps"]]
    assert [line["step"] for line in probe] == [decided["measured_steps"] + 1]
    check_completed(paths, result.summary, 4.0, tolerance=0.05)


def test_steps_that_slow_after_the_probe_are_caught_at_the_checks_and_the_run_still_ends_at_the_budget(
        make_run, monkeypatch):
    # the probe times 0.1 s steps; from step 8 on each takes 0.16 s (on the tiny model, logging and the progress
    # bar between steps did this: 0.03 s became 0.05 s and a 20 s budget took 33 s)
    fake = fake_steps(monkeypatch, 0.1)
    step_once = train_module.train_step

    def slower_later(run, learner, step, state, clock):
        if step >= 7:
            fake.t += 0.06
        return step_once(run, learner, step, state, clock)

    monkeypatch.setattr(train_module, "train_step", slower_later)
    config, paths = make_run(*BUDGET, "training.time_budget=6s")
    result = train_run(config, paths)
    decided = result.summary["time_budget"]
    assert decided["corrections"] and decided["corrections"][0]["to_steps"] < decided["corrections"][0]["from_steps"]
    assert decided["step_s"] == pytest.approx(0.16, rel=0.1)
    check_completed(paths, result.summary, 6.0, tolerance=0.05)


def test_a_resume_keeps_the_length_the_budget_decided(make_run, monkeypatch, recwarn):
    fake_steps(monkeypatch, 0.1)
    config, paths = make_run(*BUDGET, "training.time_budget=3s", name="stopped")
    signal_at_step(monkeypatch, 12)
    stopped = train_run(config, paths)
    assert stopped.stopped and stopped.steps == 12
    saved = json.loads((paths.checkpoints / "step-12" / "trainer_state.json").read_text())["budget"]
    assert saved["total_steps"] > 12

    resumed = train_run(config, paths, resume=True)
    assert resumed.steps == saved["total_steps"] and resumed.summary["time_budget"] == saved
    assert not [w for w in recwarn if "instead of" in str(w.message) or "time_budget is now" in str(w.message)]


@pytest.mark.slow
def test_a_twenty_second_budget_on_the_tiny_model(make_run):
    # Real time, so other work on the machine moves it; the +-5% target is bench/time_budget_check.py's, on a quiet
    # machine and a budget of minutes. History: with evaluations predicted as a third of a training token's cost
    # this took 33.9 s; with one timed evaluation but only the probe's 5 steps timed, CI measured 33.1 s (the
    # probe's 0.03 s steps were 0.05 s once logging and evaluations ran between them). With the checks at a
    # quarter and half of the budget: 20.07 s, quiet.
    config, paths = make_run(*BUDGET, "training.time_budget=20s", "training.batch_size=4")
    result = train_run(config, paths)
    check_completed(paths, result.summary, 20.0, tolerance=0.2)

