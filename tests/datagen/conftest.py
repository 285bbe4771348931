"""Fixtures of the datagen tests that need a model: one that answers at once, for checks of requests, not text."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def terse_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model rewired to answer every prompt with its end token at once.

    A random model writes until `max_tokens`, and 1024 tokens take a minute on a busy CPU; this one makes a
    request at the default `max_tokens` cost one forward pass. The attention and MLP outputs are zeroed, so the
    last hidden state is the token's own embedding; the final norm keeps only dimension 0, which is positive for
    every token and largest for eos, so eos wins every greedy step.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    eos = AutoTokenizer.from_pretrained(tiny_model_dir).eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed[:, 0] = 1.0
        embed[eos, 0] = 5.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
    folder = tmp_path_factory.mktemp("terse-model")
    model.save_pretrained(folder)
    for file in tiny_model_dir.iterdir():
        if file.suffix != ".safetensors" and not (folder / file.name).exists():
            shutil.copy(file, folder / file.name)
    return folder
