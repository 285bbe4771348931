"""GGUF files that llama.cpp (and Ollama, LM Studio) run as the run answers: weights, tokenizer and chat template.

The writer stands on the `gguf` package (llama.cpp's own Python library): its tensor-name maps give every
Hugging Face weight its GGUF name, its quantizers write f16, bf16 and Q8_0 exactly as llama.cpp's C code does.
Other types (the k-quants people download: q4_k_m, q5_k_m, q6_k...) go through llama.cpp's own quantizer,
`llama_model_quantize` from `llama-cpp-python`, run on a full-precision GGUF written first.

What differs between families is small and lives in `ARCHITECTURES`: the GGUF architecture name, whether q/k rows
are permuted into llama.cpp's interleaved RoPE layout (llama, Mistral), whether norm weights are stored as
`1 + w` (Gemma's RMSNorm scales by `1 + w`), and the few extra metadata keys (Phi-3's partial rotary size).
Anything else is refused with the list of what is written, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, get_args

from tunesmith.config.commands import GGUFQuant
from tunesmith.errors import ModelError

QUANT_TYPES: tuple[str, ...] = get_args(GGUFQuant)
DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Weight types the `gguf` package writes itself (no llama.cpp needed)."""
LLAMA_CPP_TYPES = tuple(t for t in QUANT_TYPES if t not in DIRECT_TYPES)
"""Weight types made by llama.cpp's quantizer (`llama-cpp-python`) from a full-precision GGUF."""


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face model family is written as GGUF."""

    gguf_name: str
    """llama.cpp's architecture name (`general.architecture`), a key of `gguf.MODEL_ARCH_NAMES`' values."""
    permute_qk: bool = False
    """llama.cpp's `llama` graph applies RoPE to interleaved pairs; HF stores q/k rows in rotate-half order."""
    norm_offset: float = 0.0
    """Added to every norm weight (Gemma's RMSNorm multiplies by `1 + w`, llama.cpp's by `w`)."""
    tied_head: bool = False
    """The family never stores an output matrix: llama.cpp reuses the token embedding."""


ARCHITECTURES = {
    "llama": Architecture("llama", permute_qk=True),
    "mistral": Architecture("llama", permute_qk=True),
    "qwen2": Architecture("qwen2"),
    "qwen3": Architecture("qwen3"),
    "gemma": Architecture("gemma", norm_offset=1.0, tied_head=True),
    "phi3": Architecture("phi3"),
}
"""Hugging Face `model_type` -> how it is written. Mistral runs on llama.cpp's llama graph, as its converter does."""

GGUF_PRE_TOKENIZERS = {
    # tokenizers' pre_tokenizer JSON (types only) -> llama.cpp's name for the same splitting rules
    ("ByteLevel",): "gpt-2",
    ("Digits", "ByteLevel"): "smollm",
}
"""Byte-level BPE pre-tokenizers whose llama.cpp counterpart is known; anything else is refused, not guessed."""

_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
GGUF_SPLIT_REGEXES = {
    _WORDS + r"\p{N}" + _REST: "qwen2",  # Qwen2, Qwen2.5, Qwen3: digits one by one
    _WORDS + r"\p{N}{1,3}" + _REST: "llama-bpe",  # Llama 3: up to three digits together
}
"""A `Split` pre-tokenizer's regex (as tokenizer.json holds it, before `ByteLevel`) -> llama.cpp's name for it."""


@dataclass(frozen=True)
class ChatMetadata:
    """What the GGUF says about conversations: the chat template llama.cpp renders, and the tokens that end a turn."""

    template: str
    end_token_ids: Sequence[int]
    add_bos: bool = False


@dataclass(frozen=True)
class Shape:
    rope_theta: float
    n_head: int
    n_kv: int
    head_dim: int
    rope_dim: int
    extras: dict = field(default_factory=dict)


def unsupported(reason: str) -> ModelError:
    return ModelError(f"GGUF export is not supported for this model: {reason}. The Hugging Face folder is complete; "
                      f"convert it with llama.cpp's convert_hf_to_gguf.py instead")


def check_quant(quant: str) -> str:
    """The quant type, lower-cased, when tunesmith can write it.

    Raises:
        ModelError: an unknown type, naming every supported one.
    """
    name = quant.lower()
    if name not in QUANT_TYPES:
        raise ModelError(f"--quant {quant}: not a GGUF type tunesmith writes; choose one of {', '.join(QUANT_TYPES)}")
    return name


def architecture_of(config) -> Architecture:
    """The writing rules of a model's family.

    Raises:
        ModelError: a family without rules, naming the supported ones.
    """
    arch = ARCHITECTURES.get(getattr(config, "model_type", None))
    if arch is None:
        raise unsupported(f"architecture {getattr(config, 'model_type', None)!r} (written: {', '.join(ARCHITECTURES)})")
    return arch


def _rope(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def shape_of(config) -> Shape:
    """Attention and RoPE sizes of a supported config.

    Raises:
        ModelError: another architecture, or rope scaling (longrope, yarn...), which the writer does not describe.
    """
    architecture_of(config)
    rope = _rope(config)
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise unsupported(f"rope scaling {rope.get('rope_type', rope.get('type'))!r}")
    theta = rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    partial = rope.get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) or 1.0
    return Shape(float(theta), n_head, n_kv, head_dim, int(head_dim * partial))


def qk_permute(weight, n_head: int):
    """HF stores q/k rows in rotate-half order; llama.cpp's llama RoPE wants each pair of rows interleaved."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def permute_for(hf_name: str, arch: Architecture, shape: Shape) -> int | None:
    """The head count to permute a projection's output rows by, or None (biases and LoRA B too)."""
    if not arch.permute_qk:
        return None
    if ".q_proj." in hf_name or hf_name.endswith(".q_proj"):
        return shape.n_head
    if ".k_proj." in hf_name or hf_name.endswith(".k_proj"):
        return shape.n_kv
    return None


def file_type(quant: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]


def add_metadata(writer, config, name: str, quant: str) -> None:
    """The keys llama.cpp's loader reads for every supported family (`{arch}.context_length`...)."""
    shape = shape_of(config)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_kv)
    writer.add_rope_dimension_count(shape.rope_dim)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type(quant))


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer (GPT-2 style, as SmolLM2 uses).

    Raises:
        ModelError: a tokenizer kind the GGUF writer does not know how to describe.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise unsupported("only byte-level BPE tokenizers (GPT-2 style) are written")
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if parts and parts[0].get("type") == "Digits" and not parts[0].get("individual_digits"):
        parts = []
    name = GGUF_PRE_TOKENIZERS.get(tuple(p.get("type") for p in parts))
    if name is None and [p.get("type") for p in parts] == ["Split", "ByteLevel"]:
        name = GGUF_SPLIT_REGEXES.get((parts[0].get("pattern") or {}).get("Regex"))
    if name is None:
        raise unsupported(f"pre-tokenizer {pre.get('type')!r} has no known llama.cpp counterpart")
    return name


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id (byte-level form, as llama.cpp expects) and their types; unused ids are padded."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            kind = (gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED) if i in added \
                else gguf.TokenType.NORMAL
            types.append(kind)
    return tokens, types


def add_tokenizer(writer, tokenizer, tokenizer_dir: Path, vocab_size: int, chat: ChatMetadata | None) -> None:
    """Vocabulary, merges, special ids, and the run's chat template and end-of-turn token."""
    import gguf

    pre = pre_tokenizer_name(tokenizer)
    tokens, types = _vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    if chat is not None:
        special.chat_template = chat.template
        special.add_special_token["bos"] = chat.add_bos
        others = [i for i in chat.end_token_ids if i != tokenizer.eos_token_id]
        if others:  # llama.cpp stops at eos and eot; the chat template's end-of-turn token is the eot
            special.special_token_types = tuple(special.special_token_types) + ("eot",)
            special.special_token_ids["eot"] = others[0]
    special.add_to_gguf(writer)


def _store(writer, name: str, array, quant: str) -> None:
    """One tensor in the asked type; vectors (norms, biases) stay f32 as llama.cpp expects, and a matrix whose
    rows do not split into Q8_0 blocks stays f16."""
    import gguf
    import numpy as np

    if array.ndim < 2 or quant == "f32":
        writer.add_tensor(name, array.astype(np.float32))
        return
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def gguf_tensor_name(names, hf_name: str) -> str:
    """A Hugging Face weight's GGUF name (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`).

    Raises:
        ModelError: a weight the family's map does not know (a head or layer kind llama.cpp has no slot for).
    """
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise unsupported(f"no GGUF name for tensor {hf_name}")
    return name


def tensor_names(config):
    import gguf

    arch = architecture_of(config)
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    return gguf.get_tensor_name_map(by_name[arch.gguf_name], config.num_hidden_layers)


def add_tensors(writer, model, quant: str) -> None:
    """Every weight under its GGUF name (a tied head once), transformed as the family needs."""
    import torch

    config = model.config
    arch, shape, names = architecture_of(config), shape_of(config), tensor_names(config)
    tied = arch.tied_head or getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = gguf_tensor_name(names, hf_name)
        data = tensor.detach().to(torch.float32)
        heads = permute_for(hf_name, arch, shape)
        if heads is not None:
            data = qk_permute(data, heads)
        if arch.norm_offset and hf_name.endswith("norm.weight"):
            data = data + arch.norm_offset
        _store(writer, name, data.numpy(), quant)


def write_gguf(model, tokenizer, tokenizer_dir: Path, path: Path, quant: str = "f32",
               chat: ChatMetadata | None = None) -> Path:
    """Write a model of a supported family and its byte-level BPE tokenizer as one GGUF file.

    `quant` is one of `DIRECT_TYPES`; `quantize_gguf` makes the others from this file.

    Raises:
        ModelError: another architecture or quant type, rope scaling, or a tokenizer the writer cannot describe;
            nothing is written then.
    """
    import gguf

    if quant not in DIRECT_TYPES:
        raise ModelError(f"write_gguf writes {', '.join(DIRECT_TYPES)}; {quant} is made by quantize_gguf")
    arch = architecture_of(model.config)
    shape_of(model.config)
    pre_tokenizer_name(tokenizer)  # refuse before anything is written
    writer = gguf.GGUFWriter(str(path), arch.gguf_name)
    try:
        add_metadata(writer, model.config, path.stem, quant)
        add_tokenizer(writer, tokenizer, tokenizer_dir, model.config.vocab_size, chat)
        add_tensors(writer, model, quant)
        write_out(writer)
    finally:
        writer.close()
    return path


def write_out(writer) -> None:
    """Header, metadata, then tensors: the order a GGUF file is laid out in."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()


def import_llama_cpp(purpose: str):
    """llama-cpp-python, or a clear way to get it.

    Raises:
        ModelError: it is not installed.
    """
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"{purpose} needs llama-cpp-python: pip install 'tunesmith[gguf]' (it builds llama.cpp, "
                         f"a few minutes)") from None
    return llama_cpp


def quantize_gguf(source: Path, target: Path, quant: str, threads: int = 0) -> Path:
    """Quantize a full-precision GGUF with llama.cpp's own quantizer (`llama-quantize`), in-process.

    llama.cpp picks the per-tensor types of a mix such as q4_k_m (some layers in q6_k), and falls back to a
    type whose blocks fit when a row is too short for k-quant blocks (tiny models).

    Raises:
        ModelError: llama-cpp-python is missing, or llama.cpp refuses the file.
    """
    import ctypes

    llama_cpp = import_llama_cpp(f"--quant {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0 or not target.is_file():
        raise ModelError(f"llama.cpp could not quantize {source.name} to {quant} (status {status})")
    return target
