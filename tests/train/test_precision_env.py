"""accelerate's mixed precision stays off whatever `accelerate launch`/`accelerate config` put in the environment:
tunesmith runs its own autocast and GradScaler, so training.precision alone decides."""

from __future__ import annotations

import pytest
import torch

from training_runs import losses, train_run


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's state is made once per process and read from the environment then: start and end afresh."""
    from accelerate.state import AcceleratorState, GradientState

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield reset
    reset()


def test_fp32_training_ignores_accelerates_bf16_setting(make_run, monkeypatch, fresh_accelerate_state):
    from tunesmith.modeling.losses import CausalLMLoss

    forward, autocast_seen = CausalLMLoss.forward, []

    def observed(self, *args, **kwargs):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CausalLMLoss, "forward", observed)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config, env_paths = make_run("training.method=lora", "training.max_steps=2", name="env")
    with_env = train_run(config, env_paths)
    assert autocast_seen and not any(autocast_seen)

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    fresh_accelerate_state()  # the plain run makes its own state, from an environment without the setting
    config, plain_paths = make_run("training.method=lora", "training.max_steps=2", name="plain")
    plain = train_run(config, plain_paths)
    assert losses(env_paths) == losses(plain_paths)
    assert with_env.final_test_loss == plain.final_test_loss


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_accelerates_fp16_setting_adds_no_second_loss_scaler(monkeypatch):
    from tunesmith.train.distributed import make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    accelerator = make_accelerator()
    assert accelerator.mixed_precision == "no" and accelerator.scaler is None and not accelerator.native_amp
