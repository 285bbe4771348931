"""A resume continues only the run it started: each checkpoint's fingerprint is checked against the settings now
(every differing key named), the automatic `--resume` passes over runs trained otherwise, a checkpoint from before
fingerprints still resumes, and `prepare` never slides new data under a run's checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings

import pytest

from tunesmith.config import ModelConfig
from tunesmith.errors import RunError, TrainingError
from tunesmith.train.fingerprint import FINGERPRINT_FILE, check_fingerprint, differences, resume_notes
from training_runs import train_run, write_qa

SAVED = ["training.batch_size=3", "training.max_steps=2", "training.save_every_steps=2"]
"""A short run that leaves `checkpoints/step-2`."""


def trained(make_run, *overrides: str, name: str = "run"):
    """A run trained with SAVED (plus `overrides`) to its checkpoint at step 2; returns (config, paths)."""
    config, paths = make_run(*SAVED, *overrides, name=name)
    train_run(config, paths)
    assert (paths.checkpoints / "latest").read_text() == "step-2"
    return config, paths


def fingerprint(paths) -> dict:
    return json.loads((paths.checkpoints / "step-2" / FINGERPRINT_FILE).read_text())


def unnamed(config):
    """The config as a user's file gives it: no output.name, so `--resume` picks the run itself."""
    return config.model_copy(update={"output": config.output.model_copy(update={"name": None})})


class TestCheckpointFingerprint:
    def test_each_checkpoint_keeps_the_settings_of_its_course(self, make_run):
        from tunesmith.prepare.manifest import Manifest

        _, paths = trained(make_run)
        saved, manifest = fingerprint(paths), Manifest.read(paths.manifest)
        course = saved["trajectory"]
        assert course["training.batch_size"] == 3 and course["training.seed"] == 42 and course["processes"] == 1
        assert course["data.config_hash"] == manifest.config_hash
        assert course["data.source_sha256"] == manifest.source.sha256
        assert course["tokenization.max_length"] == manifest.max_length
        assert course["training.precision"] == "fp32" and course["training.lora_r"] == 16
        assert "training.max_steps" not in course and "training.save_every_steps" not in course
        assert saved["schedule"]["total_steps"] == 2

    @pytest.mark.parametrize("override,expected", [
        ("training.batch_size=2", "training.batch_size: checkpoint 3, now 2"),
        ("training.seed=7", "training.seed: checkpoint 42, now 7"),
        ("training.gradient_accumulation_steps=2", "training.gradient_accumulation_steps: checkpoint 1, now 2"),
        ("training.learning_rate=5e-4", "training.learning_rate: checkpoint 0.001, now 0.0005"),
    ])
    def test_a_resume_with_a_changed_setting_is_refused_naming_it(self, make_run, override, expected):
        trained(make_run)
        config, paths = make_run(*SAVED, override, "training.max_steps=4")
        with pytest.raises(TrainingError, match="--resume with settings that change the run's course") as error:
            train_run(config, paths, resume=True)
        assert expected in str(error.value) and "without --resume under another output.name" in str(error.value)
        assert (paths.checkpoints / "latest").read_text() == "step-2"  # nothing was trained or removed

    def test_every_differing_key_is_named_at_once(self, make_run):
        trained(make_run)
        config, paths = make_run(*SAVED, "training.batch_size=2", "training.seed=7", "training.optimizer=adafactor")
        with pytest.raises(TrainingError) as error:
            train_run(config, paths, resume=True)
        for key in ("training.batch_size", "training.seed", "training.optimizer"):
            assert f"{key}: checkpoint" in str(error.value)

    def test_another_model_is_refused_before_its_weights_meet_the_checkpoint(self, make_run, tiny_model_dir,
                                                                             tmp_path):
        config, paths = trained(make_run)
        other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
        moved = config.model_copy(update={"model": ModelConfig(name=str(other))})
        with pytest.raises(TrainingError, match=re.escape(f"model.name: checkpoint {tiny_model_dir}, now {other}")):
            train_run(moved, paths, resume=True)

    def test_the_keys_that_may_change_do_not_stop_a_resume(self, make_run):
        trained(make_run)
        config, paths = make_run(*SAVED, "training.max_steps=4", "training.save_every_steps=1",
                                 "training.keep_checkpoints=3", "training.eval_every_steps=2",
                                 "training.log_every_steps=2", "training.num_threads=1", "training.merge_lora=true")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train_run(config, paths, resume=True)
        assert result.steps == 4 and paths.merged_model.is_dir()
        assert not [w for w in caught if "tunesmith" in w.filename]  # constant schedule: exact, nothing to say
        assert fingerprint(paths)["trajectory"] == json.loads(
            (paths.checkpoints / "step-4" / FINGERPRINT_FILE).read_text())["trajectory"]

    def test_a_checkpoint_from_before_fingerprints_resumes_with_a_note(self, make_run):
        _, paths = trained(make_run)
        (paths.checkpoints / "step-2" / FINGERPRINT_FILE).unlink()
        config, paths = make_run(*SAVED, "training.max_steps=4", "training.seed=7")  # unchecked, as before
        with pytest.warns(UserWarning, match="checkpoint without a fingerprint .*only the number of processes"):
            result = train_run(config, paths, resume=True)
        assert result.steps == 4


class TestCheckHelpers:
    NOW = {"version": 1, "trajectory": {"training.batch_size": 4, "training.seed": 42, "data.config_hash": "b" * 16},
           "schedule": {"total_steps": 10, "warmup_steps": 0, "peak_lr": 1e-3, "lr_scheduler": "cosine"}}

    def write(self, folder, trajectory: dict, schedule: dict) -> None:
        (folder / FINGERPRINT_FILE).write_text(json.dumps({"version": 1, "trajectory": trajectory,
                                                           "schedule": schedule}))

    def test_differences_compare_only_what_both_sides_know(self):
        saved = {"training.batch_size": 8, "training.seed": 42, "training.precision": "bf16"}
        assert differences(saved, {"training.batch_size": 4, "training.seed": 42}) == [
            "training.batch_size: checkpoint 8, now 4"]
        assert differences({"data.source_sha256": "a" * 64}, {"data.source_sha256": "c" * 64}) == [
            f"data.source_sha256: checkpoint {'a' * 12}…, now {'c' * 12}…"]

    def test_check_passes_a_match_and_a_checkpoint_without_fingerprint(self, tmp_path):
        check_fingerprint(tmp_path, self.NOW)  # no fingerprint.json: an older checkpoint
        self.write(tmp_path, self.NOW["trajectory"], {**self.NOW["schedule"], "total_steps": 6})
        check_fingerprint(tmp_path, self.NOW)  # the length may change
        self.write(tmp_path, {**self.NOW["trajectory"], "training.batch_size": 8}, self.NOW["schedule"])
        with pytest.raises(TrainingError, match="training.batch_size: checkpoint 8, now 4"):
            check_fingerprint(tmp_path, self.NOW)

    @pytest.mark.parametrize("schedule,step,noted", [
        ({"total_steps": 6, "lr_scheduler": "cosine"}, 3, True),  # cosine over 6 steps, now over 10: rates change
        ({"total_steps": 6, "lr_scheduler": "cosine"}, 6, False),  # resumed at the old end: no rate was planned
        ({"total_steps": 10, "lr_scheduler": "cosine"}, 3, False),  # same length
    ])
    def test_a_new_length_is_noted_when_it_changes_the_rates_to_come(self, tmp_path, schedule, step, noted):
        self.write(tmp_path, self.NOW["trajectory"], {**self.NOW["schedule"], **schedule})
        notes = resume_notes(tmp_path, self.NOW, step)
        assert bool(notes) == noted
        if noted:
            assert "now lasts 10 steps instead of 6" in notes[0] and f"from step {step + 1} on" in notes[0]

    def test_a_constant_rate_stays_exact_when_the_run_grows(self, tmp_path):
        constant = {**self.NOW["schedule"], "lr_scheduler": "constant"}
        self.write(tmp_path, self.NOW["trajectory"], {**constant, "total_steps": 6})
        assert resume_notes(tmp_path, {**self.NOW, "schedule": constant}, 3) == []


class TestAutomaticResume:
    def test_a_newer_run_trained_otherwise_is_passed_over_for_the_matching_older_one(self, make_run):
        from tunesmith.api import _latest_resumable_run

        config, older = trained(make_run, name="qa-lora-older000")
        _, newer = trained(make_run, "training.seed=7", name="qa-lora-newer000")
        os.utime(older.root, (1_000_000, 1_000_000))  # the seed-7 run is the newest one
        extended = config.model_copy(update={"training": config.training.model_copy(update={"max_steps": 4})})
        assert _latest_resumable_run(unnamed(extended)) == "qa-lora-older000"
        os.utime(newer.root, (1, 1))
        assert _latest_resumable_run(unnamed(extended)) == "qa-lora-older000"

    def test_no_matching_run_names_the_nearest_and_what_differs(self, make_run):
        from tunesmith.api import _latest_resumable_run

        config, _ = trained(make_run, "training.seed=7", name="qa-lora-seven000")
        trained(make_run, "training.seed=8", "training.batch_size=2", name="qa-lora-eight000")
        wanted = config.model_copy(update={"training": config.training.model_copy(update={"seed": 42})})
        with pytest.raises(TrainingError, match=r"the nearest, qa-lora-seven000, differs in "
                                                r"training.seed: checkpoint 7, now 42: restore them"):
            _latest_resumable_run(unnamed(wanted))


class TestPrepareUnderCheckpoints:
    def test_resuming_with_changed_data_is_refused_and_leaves_the_run_as_it_was(self, make_run, tmp_path):
        from tunesmith.api import train_config
        from tunesmith.prepare.manifest import Manifest

        config, paths = trained(make_run)
        before = Manifest.read(paths.manifest)
        write_qa(tmp_path / "qa.jsonl", n=9)  # the data file changes under the run
        with pytest.raises(RunError, match=r"holds checkpoints \(step-2\) trained on other prepared data.*"
                                           r"--set output.name=NAME"):
            train_config(config, resume=True)
        assert Manifest.read(paths.manifest) == before
        assert (paths.checkpoints / "step-2" / "trainable.safetensors").is_file()

    def test_a_fresh_start_replaces_the_data_and_drops_the_old_checkpoints(self, make_run, tmp_path):
        from tunesmith.prepare.manifest import Manifest
        from tunesmith.prepare.pipeline import prepare

        config, paths = trained(make_run)
        before = Manifest.read(paths.manifest)
        write_qa(tmp_path / "qa.jsonl", n=9)
        sections = (config.model, config.data, config.template, config.tokenization, config.split)
        with pytest.raises(RunError, match="holds checkpoints"):
            prepare(paths, *sections)  # `data prepare` alone: refused too
        prepared = prepare(paths, *sections, fresh_start=True)
        assert not prepared.reused and prepared.manifest.source.sha256 != before.source.sha256
        assert not paths.checkpoints.exists()

    def test_unchanged_data_is_reused_under_checkpoints(self, make_run):
        from tunesmith.prepare.pipeline import prepare

        config, paths = trained(make_run)
        assert prepare(paths, config.model, config.data, config.template, config.tokenization, config.split).reused
