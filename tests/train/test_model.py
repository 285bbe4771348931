"""Building the trained model: gradient checkpointing really recomputes (and changes no number), QLoRA says
what it needs, and LoRA updates stay visible under bf16."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import TrainingConfig
from tunesmith.errors import TrainingError
from training_runs import losses, train_run


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_recomputes_each_layer_and_gives_the_same_training(make_run, monkeypatch, method):
    """With checkpointing, each decoder layer's body runs twice per training forward (once forward, once again in
    backward to rebuild the activations it did not keep); without, once. Counted at the layer's MLP, which runs
    inside the checkpointed region (hooks on the layer itself stay outside it)."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    counts = {"calls": 0}
    mlp_forward = LlamaMLP.forward

    def counting(self, x):
        if self.training and torch.is_grad_enabled():  # training steps, not the test-loss evaluations
            counts["calls"] += 1
        return mlp_forward(self, x)

    monkeypatch.setattr(LlamaMLP, "forward", counting)
    settings = [f"training.method={method}", "training.learning_rate=1e-3", "training.max_steps=3",
                "training.lora_dropout=0"]
    runs, calls = {}, {}
    for name, extra in (("plain", []), ("checkpointed", ["training.gradient_checkpointing=true"])):
        counts["calls"] = 0
        config, paths = make_run(*settings, *extra, name=name)
        train_run(config, paths)
        runs[name], calls[name] = losses(paths), counts["calls"]
    assert calls["plain"] == 3 * 2  # 3 steps x 2 layers, one micro-batch a step (batch 8 = the whole split)
    assert calls["checkpointed"] == 2 * calls["plain"]
    assert runs["checkpointed"] == pytest.approx(runs["plain"], abs=1e-5)


def test_qlora_without_a_gpu_is_a_clear_error(make_run):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config, paths = make_run("training.method=qlora")
    with pytest.raises(TrainingError, match="qlora needs a CUDA GPU"):
        train_run(config, paths)


def test_under_bf16_a_small_lora_update_still_changes_the_output(tiny_model_dir):
    """bf16 base output + a LoRA delta below half its last bit rounds back to the base output; summing in fp32
    (keep_lora_sums_fp32) keeps early, small adapters visible, as in fp32 training."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models import apply_lora
    from tunesmith.train.model import keep_lora_sums_fp32

    def delta(hook: bool) -> float:
        torch.manual_seed(0)
        model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), TrainingConfig(lora_dropout=0.0))
        if hook:
            keep_lora_sums_fp32(model)
        layer = model.get_base_model().model.layers[0].mlp.down_proj
        x = torch.randn(4, 128)
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16)  # one region per forward: autocast caches weight casts
        with torch.no_grad():
            with bf16:
                before = layer(x).float()
            layer.lora_B["default"].weight.fill_(1e-6)
            with bf16:
                after = layer(x).float()
        return (after - before).abs().max().item()

    assert delta(hook=False) == 0.0  # the update is invisible in plain bf16 autocast
    assert delta(hook=True) > 0.0


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_trainable_layers_full_changes_only_the_top_layer_and_the_final_norm(make_run, tiny_model_dir):
    config, paths = make_run("training.method=full", "training.learning_rate=1e-2", "training.trainable_layers=1",
                             "training.save_every_steps=2")
    result = train_run(config, paths)
    before, after = _weights(tiny_model_dir), _weights(result.model_dir)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.layers.1.") or name == "model.norm.weight" for name in changed)
    assert "model.embed_tokens.weight" not in changed and not any(n.startswith("model.layers.0.") for n in changed)
    # the checkpoint holds the trained weights only, and its fingerprint the setting (a resume compares it)
    from safetensors.torch import load_file

    saved = load_file(str(paths.checkpoints / "step-2" / "trainable.safetensors"))
    assert saved and all(name.startswith("model.layers.1.") or name == "model.norm.weight" for name in saved)
    assert '"training.trainable_layers": 1' in (paths.checkpoints / "step-2" / "fingerprint.json").read_text()


def test_a_run_with_the_cache_trains_as_one_without_it(make_run):
    import json

    import numpy as np

    runs = {}
    for on in (True, False):
        config, paths = make_run("training.method=full", "training.learning_rate=1e-2", "training.trainable_layers=1",
                                 "training.max_steps=12", "training.batch_size=4",
                                 f"training.frozen_layer_cache={str(on).lower()}", name=f"cache-{on}")
        result = train_run(config, paths)
        lines = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
        runs[on] = result.summary, [line["loss"] for line in lines if "loss" in line]
    (with_cache, losses_on), (without, losses_off) = runs[True], runs[False]
    # 8 training examples in batches of 4: from the third step on every example is kept
    assert with_cache["frozen_layer_cache"]["batches_skipped"] >= 10 and "frozen_layer_cache" not in without
    np.testing.assert_allclose(losses_on, losses_off, rtol=1e-4)


def test_trainable_layers_lora_adapts_only_the_top_layer(tiny_model_dir):
    from tunesmith.models import apply_lora

    model = apply_lora(tiny_model(tiny_model_dir), TrainingConfig(method="lora", trainable_layers=1))
    adapted = {name.split(".lora_")[0] for name, _ in model.named_parameters() if ".lora_" in name}
    assert adapted and all(".layers.1." in name for name in adapted)


def test_more_trainable_layers_than_the_model_has_is_refused_with_the_count(tiny_model_dir):
    from tunesmith.errors import ConfigError
    from tunesmith.models import freeze_lower_layers

    with pytest.raises(ConfigError, match="trainable_layers=3: the model has 2 decoder layers"):
        freeze_lower_layers(tiny_model(tiny_model_dir), 3)


def tiny_model(folder):
    """The tiny model, loaded in fp32."""
    from tunesmith.config import ModelConfig
    from tunesmith.models import load_model

    return load_model(ModelConfig(name=str(folder)), dtype=torch.float32)


def test_lora_defaults_to_a_higher_rate_on_small_models_and_the_usual_one_on_large(make_run):
    from tunesmith.config import learning_rate

    # the usual 2e-4 learned no facts on SmolLM2-135M in 9 minutes; 1e-3 did (bench/README.md)
    assert learning_rate(TrainingConfig(method="lora"), 135_000_000) == 1e-3
    assert learning_rate(TrainingConfig(method="lora"), 7_000_000_000) == 2e-4
    assert learning_rate(TrainingConfig(method="lora")) == 2e-4  # size unknown
    assert learning_rate(TrainingConfig(method="qlora"), 135_000_000) == 2e-4
    assert learning_rate(TrainingConfig(method="full"), 135_000_000) == 2e-5
    assert learning_rate(TrainingConfig(method="lora", learning_rate=3e-4), 135_000_000) == 3e-4
    # a run resolves it from the model's config file: the tiny model is small
    config, paths = make_run("training.method=lora", "training.max_steps=1")
    assert config.training.learning_rate is None
    assert train_run(config, paths).summary["learning_rate"] == 1e-3
