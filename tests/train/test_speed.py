"""The speed choices are made by device: a CPU keeps its bf16 working weights, fp32 LoRA sums, packed attention and
small softmax blocks; a GPU trains under plain autocast, with LoRA's base loaded in bf16 and whole-chunk blocks."""

from __future__ import annotations

import pytest
import torch

from tunesmith.modeling import losses
from tunesmith.train.speed import SpeedChoices, speed_choices
from training_runs import train_run


class TestSpeedChoices:
    @pytest.mark.parametrize(("method", "precision", "expected"), [
        ("full", "bf16", SpeedChoices(True, False, True, torch.float32)),
        ("lora", "bf16", SpeedChoices(True, True, True, torch.float32)),
        ("lora", "fp16", SpeedChoices(False, True, True, torch.float32)),
        ("lora", "fp32", SpeedChoices(False, False, True, torch.float32)),
        ("full", "fp32", SpeedChoices(False, False, True, torch.float32)),
        ("qlora", "bf16", SpeedChoices(True, True, False, torch.float32)),
    ])
    def test_cpu_keeps_todays_choices(self, method, precision, expected):
        assert speed_choices("cpu", method, precision) == expected

    @pytest.mark.parametrize("method", ["full", "lora", "qlora"])
    @pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
    def test_cuda_trains_under_plain_autocast(self, method, precision):
        choices = speed_choices("cuda", method, precision)
        assert not (choices.bf16_weights or choices.fp32_lora_sums or choices.packed_attention)
        bf16_base = method == "lora" and precision == "bf16"
        assert choices.lora_base_dtype == (torch.bfloat16 if bf16_base else torch.float32)


class TestSoftmaxRows:
    def test_cpu_takes_small_blocks_and_cuda_the_whole_chunk(self):
        assert losses.softmax_rows("cpu", 1024) == losses.SOFTMAX_ROWS == 64
        assert losses.softmax_rows("cuda", 1024) == 1024

    def test_whole_chunk_blocks_give_the_same_loss_and_gradients(self, monkeypatch):
        """What a GPU runs (one block per chunk), run here on the CPU: the same numbers as 64-row blocks."""
        torch.manual_seed(0)
        head = torch.nn.Linear(16, 300, bias=False)
        hidden = torch.randn(1, 150, 16, requires_grad=True)
        labels = torch.randint(0, 300, (1, 150))
        labels[0, :20] = -100

        def loss_and_grads():
            hidden.grad = head.weight.grad = None
            loss = losses.token_loss_sum(hidden, labels, head, chunk_rows=100)
            loss.backward()
            return loss.detach(), hidden.grad.clone(), head.weight.grad.clone()

        blocks = loss_and_grads()
        seen = []
        monkeypatch.setattr(losses, "softmax_rows", lambda _device, chunk: seen.append(chunk) or chunk)
        whole = loss_and_grads()
        assert seen == [100]
        for a, b in zip(blocks, whole):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_setup_on_cpu_takes_the_cpu_choices():
    from tunesmith.config import TrainingConfig
    from tunesmith.train.loop import setup

    runtime = setup(TrainingConfig(method="lora", precision="bf16"))
    assert runtime.speed == speed_choices("cpu", "lora", "bf16")
    assert runtime.speed.bf16_weights and runtime.speed.fp32_lora_sums


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gpu_choices_train_under_plain_autocast_with_a_bf16_lora_base(make_run, monkeypatch, method):
    """The GPU's choices, taken here on the CPU: no bf16 copies, no frozen-base cast, no fp32 LoRA-sum hooks,
    transformers' attention, and LoRA's base loaded in bf16 by the model loader (adapters stay fp32)."""
    import tunesmith.models as models_module
    import tunesmith.train.loop as loop_module
    import tunesmith.train.model as model_module

    monkeypatch.setattr(loop_module, "speed_choices", lambda _device, m, p: speed_choices("cuda", m, p))
    made, dtypes = [], []
    for name in ("bf16_trainable_copies", "frozen_to_bf16", "keep_lora_sums_fp32", "register_packed_attention"):
        monkeypatch.setattr(model_module, name, lambda *_args, name=name: made.append(name))
    load_causal_lm = models_module.load_causal_lm
    monkeypatch.setattr(models_module, "load_causal_lm",
                        lambda cfg, **options: dtypes.append(options.get("dtype")) or load_causal_lm(cfg, **options))
    config, paths = make_run("training.precision=bf16", f"training.method={method}", "training.max_steps=2")
    result = train_run(config, paths)
    assert made == []
    assert dtypes == [torch.bfloat16 if method == "lora" else torch.float32]
    trainable = {p.dtype for p in result.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in result.model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32}
    assert frozen == ({torch.bfloat16} if method == "lora" else set())
