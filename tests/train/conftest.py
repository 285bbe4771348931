"""The `make_run` fixture: a prepared run of the tiny model, ready to train (helpers are in training_runs.py)."""

from __future__ import annotations

import pytest

from tunesmith.config import load_config
from training_runs import prepare_run, write_qa


@pytest.fixture
def make_run(tmp_path, tiny_model_dir):
    """Prepare a run of the tiny model on 8 train / 2 test examples; returns (config, paths)."""
    data = write_qa(tmp_path / "qa.jsonl")

    def make(*overrides: str, name: str = "run"):
        config = load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}",
                                    f"output.runs_dir={tmp_path / 'runs'}", f"output.name={name}",
                                    "split.test_size=2", "training.precision=fp32", "training.max_steps=4",
                                    "training.warmup_steps=0", "training.lr_scheduler=constant", *overrides])
        return config, prepare_run(config)

    return make
