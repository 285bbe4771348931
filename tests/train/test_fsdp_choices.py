"""What decides sharding, and what sharding turns off, without starting processes (sharding.py, speed.py)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import TrainingConfig
from tunesmith.errors import TrainingError
from tunesmith.train.sharding import (
    decoder_layers,
    is_sharded_run,
    training_state_bytes,
)
from tunesmith.train.speed import speed_choices

GB = 2**30


@pytest.mark.parametrize(("choice", "world", "state_gb", "device_gb", "sharded"), [
    ("auto", 2, 2.2, 11.5, False),  # SmolLM2-135M full finetuning on a 23 GB machine, 2 processes: DDP
    ("auto", 8, 126, 80, True),  # 7B full finetuning on 80 GB GPUs: no copy fits, FSDP
    ("auto", 2, 41, 80, True),  # more than half the device: activations would not fit beside it
    ("auto", 1, 126, 80, False),  # one process: nothing to shard across
    ("fsdp", 2, 0.1, 80, True),
    ("fsdp", 1, 0.1, 80, False),
    ("ddp", 8, 126, 80, False),
])
def test_auto_shards_when_the_training_state_takes_over_half_a_device(choice, world, state_gb, device_gb, sharded):
    assert is_sharded_run(choice, world, int(state_gb * GB), int(device_gb * GB)) is sharded


def test_the_training_state_counts_16_bytes_per_trainable_parameter_and_frozen_ones_as_stored():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16))
    model[1].weight.requires_grad_(False)
    assert training_state_bytes(model) == 16 * 16 + 16 * 2


def test_sharding_turns_off_the_bf16_weight_copies_and_keeps_the_other_cpu_choices():
    plain, sharded = speed_choices("cpu", "lora", "bf16"), speed_choices("cpu", "lora", "bf16", sharded=True)
    assert plain.bf16_weights and not sharded.bf16_weights
    assert (sharded.fp32_lora_sums, sharded.packed_attention) == (plain.fp32_lora_sums, plain.packed_attention)
    assert not speed_choices("cuda", "full", "bf16", sharded=True).bf16_weights


def test_each_decoder_layer_is_a_shard_group_innermost_first_under_lora_too(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunesmith.models import apply_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert decoder_layers(model) == list(model.model.layers)[::-1]
    lora = apply_lora(model, TrainingConfig(method="lora"))
    assert [type(m).__name__ for m in decoder_layers(lora)] == ["LlamaDecoderLayer"] * 2
    with pytest.raises(TrainingError, match="training.distributed=ddp"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_sharding_on_a_cpu_makes_glibc_return_freed_buffers_and_a_gpu_run_leaves_malloc_alone(monkeypatch):
    """The gather and reduce buffers FSDP frees each step must leave the process (bench/README.md); the
    mesh and fully_shard are stubbed out: only the choice by device is looked at."""
    from tunesmith.train import sharding

    calls = []
    monkeypatch.setattr(sharding, "return_freed_buffers", lambda: calls.append("mallopt") or True)
    monkeypatch.setattr("torch.distributed.device_mesh.init_device_mesh", lambda *a, **k: None)
    monkeypatch.setattr("torch.distributed.fsdp.fully_shard", lambda *a, **k: None)
    loss_model = torch.nn.Module()
    loss_model.model = torch.nn.Module()
    monkeypatch.setattr(sharding, "decoder_layers", lambda model: [])
    sharding.shard(loss_model, TrainingConfig(), torch.device("cpu"), 2)
    assert calls == ["mallopt"]
    sharding.shard(loss_model, TrainingConfig(), torch.device("meta"), 2)
    assert calls == ["mallopt"]
