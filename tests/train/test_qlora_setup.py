"""QLoRA's 4-bit load: each process on its own GPU, computing in a dtype its GPU has, and under the same
safetensors-only rule as every other model load. Decided before any GPU is needed, so checked here on the CPU."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import ModelConfig, TrainingConfig
from tunesmith.errors import ModelError
from tunesmith.train import model as model_module
from tunesmith.train.model import load_4bit, qlora_compute_dtype, qlora_device_map
from tunesmith.train.speed import speed_choices


@pytest.mark.parametrize("local_rank", [0, 1, 3])
def test_each_process_loads_onto_its_local_rank(local_rank):
    assert qlora_device_map(local_rank) == {"": local_rank}


@pytest.mark.parametrize(("bf16_supported", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_compute_dtype_is_fp16_where_the_gpu_has_no_bf16(bf16_supported, dtype):
    assert qlora_compute_dtype(bf16_supported) == dtype


def test_build_model_hands_the_4bit_load_this_processs_gpu_and_its_bf16_support(monkeypatch, tiny_model_dir):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)  # accelerate made local rank 2's GPU current
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: object() if name == "bitsandbytes" else find_spec(name, *args))
    calls = []

    class Loaded(Exception):
        pass

    def fake_load_4bit(*args):
        calls.append(args)
        raise Loaded

    monkeypatch.setattr(model_module, "load_4bit", fake_load_4bit)
    model_cfg = ModelConfig(name=str(tiny_model_dir))
    with pytest.raises(Loaded):
        model_module.build_model(model_cfg, TrainingConfig(method="qlora"), speed_choices("cuda", "qlora", "fp16"))
    assert calls == [(model_cfg, 2, False)]


def test_a_pickle_only_folder_is_refused_before_anything_loads(monkeypatch, tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    def never(*_args, **_kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(ModelError, match="allow_pickle=true"):
        load_4bit(ModelConfig(name=str(folder)), 0, True)
