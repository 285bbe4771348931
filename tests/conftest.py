"""Shared fixtures: a temporary TUNESMITH_HOME for every test, the real SmolLM2 tokenizer, and a tiny model.

The tiny model has the real tokenizer and vocabulary but two small layers, so a training step takes
milliseconds while tokenization, templates and masking are exactly those of the default model.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def tunesmith_home(tmp_path, monkeypatch):
    home = tmp_path / "tunesmith-home"
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A folder holding only the default model's tokenizer, read from the embedded GGUF."""
    from transformers import AutoTokenizer

    from tunesmith.models import EMBEDDED_MODELS, embedded_gguf

    gguf = embedded_gguf(next(iter(EMBEDDED_MODELS)))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory):
    """A two-layer Llama with the real tokenizer, saved as a normal model folder (safetensors)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="session")
def varied_model_dir(tiny_model_dir, tokenizer_dir, tmp_path_factory):
    """The tiny model with larger random weights, so greedy answers differ from prompt to prompt (with the usual
    0.02 init every chat prompt is answered with newlines, which hides batching and history bugs)."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    folder = tmp_path_factory.mktemp("varied-model")
    LlamaForCausalLM(config).save_pretrained(folder)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder / file.name)
    return folder
