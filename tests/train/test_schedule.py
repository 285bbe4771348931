"""The schedule: exact learning rates at known steps, warmup from a ratio or a count, the step plan, and a data
order that is a pure function of seed, epoch and process."""

from __future__ import annotations

import pytest

from tunesmith.config import TrainingConfig
from tunesmith.train.schedule import lr_at, plan_steps, step_examples, steps_per_epoch, warmup_steps


class TestLrAt:
    @pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
    def test_warmup_rises_linearly_to_the_peak(self, schedule):
        assert [lr_at(s, 1.0, 10, 4, schedule) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]

    def test_decays(self):
        assert [lr_at(s, 2.0, 6, 2, "linear") for s in range(2, 6)] == [2.0, 1.5, 1.0, 0.5]
        assert [round(lr_at(s, 2.0, 6, 2, "cosine"), 6) for s in range(2, 6)] == [2.0, 1.707107, 1.0, 0.292893]
        assert {lr_at(s, 2.0, 6, 2, "constant") for s in range(2, 6)} == {2.0}

    @pytest.mark.parametrize("schedule, expected", [
        ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]),
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ])
    def test_exact_rates_of_a_whole_run_with_warmup(self, schedule, expected):
        """Peak 1, 6 steps, 2 of warmup: every step's rate, from the first warmup step to the last decay step."""
        assert [round(lr_at(s, 1.0, 6, 2, schedule), 6) for s in range(6)] == expected

    def test_no_warmup_starts_at_the_peak_and_never_reaches_zero_inside_the_run(self):
        assert lr_at(0, 3e-4, 100, 0, "linear") == 3e-4
        assert lr_at(99, 3e-4, 100, 0, "linear") == pytest.approx(3e-6)
        assert 0 < lr_at(99, 3e-4, 100, 0, "cosine") < 1e-6

    @pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
    def test_a_resumed_plan_continues_the_uninterrupted_sequence(self, schedule):
        """A run resumed at step k rebuilds its plan from the config alone and takes the rates the uninterrupted
        run takes from k on (the trainer's own resume is checked in test_checkpoints.py)."""
        training = TrainingConfig(lr_scheduler=schedule, warmup_steps=3, max_steps=12, learning_rate=1e-3)
        uninterrupted = plan_steps(training, num_examples=40, world_size=1)
        expected = [lr_at(s, 1e-3, 12, 3, schedule) for s in range(12)]
        assert [uninterrupted.lr(s) for s in range(12)] == expected
        for k in (1, 3, 7):
            resumed = plan_steps(training, num_examples=40, world_size=1)
            assert [resumed.lr(s) for s in range(k, 12)] == expected[k:]


class TestWarmupAndPlan:
    def test_warmup_steps_from_ratio_or_explicit(self):
        assert warmup_steps(TrainingConfig(warmup_ratio=0.1), 25) == 3
        assert warmup_steps(TrainingConfig(warmup_ratio=0.1, warmup_steps=7), 25) == 7
        assert warmup_steps(TrainingConfig(warmup_ratio=0.0), 25) == 0

    def test_plan_counts_epochs_of_the_whole_step_over_all_processes(self):
        training = TrainingConfig(batch_size=2, gradient_accumulation_steps=2, epochs=2, warmup_ratio=0.25)
        plan = plan_steps(training, num_examples=13, world_size=2)  # 8 per step: 1 full step + 5 for 2 processes
        assert (plan.epoch_steps, plan.total_steps, plan.warmup_steps) == (2, 4, 1)
        assert plan.epochs(3) == 1.5
        assert plan_steps(training.model_copy(update={"max_steps": 9}), 13, 2).total_steps == 9

    def test_a_short_last_step_is_kept_only_when_every_process_gets_an_example(self):
        assert steps_per_epoch(9, 4, world_size=1) == 3
        assert steps_per_epoch(9, 4, world_size=2) == 2


class TestDataOrder:
    def test_each_epoch_sees_every_example_once_in_a_seeded_order(self):
        training = TrainingConfig(batch_size=3, gradient_accumulation_steps=2, seed=5)
        epoch0 = [i for s in range(2) for part in step_examples(s, 10, training) for i in part]
        epoch1 = [i for s in range(2, 4) for part in step_examples(s, 10, training) for i in part]
        assert sorted(epoch0) == sorted(epoch1) == list(range(10))
        assert epoch0 != epoch1
        assert epoch0 == [i for s in range(2) for part in step_examples(s, 10, training) for i in part]

    def test_processes_get_disjoint_shards_of_each_step(self):
        training = TrainingConfig(batch_size=2, gradient_accumulation_steps=2, seed=0)
        for step in range(4):  # 13 examples, 8 per step: the short last step still feeds both processes
            shards = [sum(step_examples(step, 13, training, rank, 2), []) for rank in (0, 1)]
            assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
            assert len(step_examples(step, 13, training, 0, 2)) == len(step_examples(step, 13, training, 1, 2))


def test_the_epoch_order_is_made_once_per_epoch_and_read_only():
    from tunesmith.train.schedule import epoch_order

    epoch_order.cache_clear()
    training = TrainingConfig(batch_size=2, gradient_accumulation_steps=1, seed=5)
    for step in range(8):  # 10 examples, 5 steps an epoch: epochs 0 and 1
        step_examples(step, 10, training)
    assert epoch_order.cache_info().misses == 2
    with pytest.raises(ValueError):
        epoch_order(10, 5, 0)[0] = 3
