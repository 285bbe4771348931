"""The frozen lower layers' kept output stands in for them exactly: the same loss and gradients as computing them,
for each architecture family, padded, left-padded and packed; they really do not run then; an example not yet
kept makes them run again. (A whole run with and without it: tests/train/test_model.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.frozen_prefix import (MAX_CACHE_BYTES, FrozenPrefixCache, frozen_boundary,
                                              random_in_training, store_fits)
from tunesmith.modeling.losses import CausalLMLoss
from tunesmith.modeling.packing import register_packed_attention
from tunesmith.models import decoder_layers, freeze_lower_layers
from test_logit_scaling import VOCAB, examples

SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def family(name: str):
    import transformers

    config_class, model_class = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "gemma": ("GemmaConfig", "GemmaForCausalLM"), "granite": ("GraniteConfig", "GraniteForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"), "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    }[name]
    extra = {"head_dim": 8} if name == "gemma" else {}
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**SMALL, **extra)).float()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    return model


def cached_loss_model(model):
    freeze_lower_layers(model, 1)
    layers = decoder_layers(model)
    data = examples()
    cache = FrozenPrefixCache(layers, frozen_boundary(layers, model.get_input_embeddings()),
                              np.array([len(e["input_ids"]) for e in data]), model.config.hidden_size)
    loss_model = CausalLMLoss(model)
    loss_model.prefix_cache = cache
    return loss_model, cache, data


def loss_and_grads(loss_model, batch):
    loss_model.zero_grad(set_to_none=True)
    loss = loss_model(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in loss_model.named_parameters() if p.grad is not None}


def counting_calls(layer) -> dict:
    calls = {"n": 0}
    mlp = layer.mlp

    def count(*args):
        calls["n"] += 1

    mlp.register_forward_hook(count)
    return calls


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma", "granite", "mistral", "phi3"])
@pytest.mark.parametrize("layout", ["padded", "left-padded", "packed"])
def test_the_kept_output_gives_the_loss_and_gradients_of_the_frozen_layers(name, layout):
    model = family(name)
    if layout == "packed":
        model.set_attn_implementation(register_packed_attention())
    loss_model, cache, data = cached_loss_model(model)
    packing, side = layout == "packed", "left" if layout == "left-padded" else "right"
    order = [3, 0, 4, 1, 2]
    batch = make_batch([data[i] for i in order], packing, 24, 0, side)
    batch["cache_index"] = cache.batch_index(order, packing, 24, side)
    calls = counting_calls(decoder_layers(model)[0])

    first = loss_and_grads(loss_model, batch)  # the frozen layers run, and their output is kept
    assert calls["n"] == 1 and cache.skipped_batches == 0 and bool(cache.filled.all())
    second = loss_and_grads(loss_model, batch)  # now kept: they do not run
    assert calls["n"] == 1 and cache.skipped_batches == 1
    torch.testing.assert_close(second[0], first[0], rtol=1e-5, atol=1e-5)
    assert first[1].keys() == second[1].keys() and all(".layers.2." in n or "norm" in n for n in first[1])
    for key in first[1]:
        torch.testing.assert_close(second[1][key], first[1][key], rtol=1e-4, atol=1e-5, msg=key)
    # and the layers are whole again afterwards: a plain forward runs them
    loss_model(**{k: v for k, v in batch.items() if k != "cache_index"})
    assert calls["n"] == 2


def test_a_micro_batch_with_an_example_not_yet_kept_runs_the_frozen_layers_and_keeps_it():
    model = family("llama")
    loss_model, cache, data = cached_loss_model(model)
    calls = counting_calls(decoder_layers(model)[0])
    for indices in ([0, 1], [0, 1], [1, 2], [2, 1]):
        batch = make_batch([data[i] for i in indices], False, 0, 0)
        loss_model(**batch, cache_index=cache.batch_index(indices, False, 0))
    assert calls["n"] == 2 and cache.skipped_batches == 2  # [0, 1] then [1, 2] ran the layers
    kept = cache.filled[:-1].numpy()
    assert kept[:cache.offsets[3]].all() and not kept[cache.offsets[3]:].any()


def test_the_boundary_is_the_first_layer_with_a_trained_weight_and_none_when_the_embeddings_train():
    model = family("llama")
    layers = decoder_layers(model)
    assert frozen_boundary(layers, model.get_input_embeddings()) == 0  # everything trains
    freeze_lower_layers(model, 2)
    assert frozen_boundary(layers, model.get_input_embeddings()) == 1
    model.get_input_embeddings().weight.requires_grad_(True)
    assert frozen_boundary(layers, model.get_input_embeddings()) == 0


def test_a_store_over_the_limit_is_refused():
    width = 576  # SmolLM2-135M: 2 GiB hold ~932k tokens of fp32 rows
    tokens = MAX_CACHE_BYTES // (width * 4)
    assert store_fits(np.array([tokens - 1]), width) and not store_fits(np.array([tokens, 1]), width)


def test_dropout_in_the_model_config_is_named():
    from transformers import LlamaConfig

    assert random_in_training(LlamaConfig(**SMALL)) == []
    assert random_in_training(LlamaConfig(**SMALL, attention_dropout=0.1)) == ["attention_dropout"]
