"""Export a run's model for use outside tunesmith: a plain Hugging Face folder, LoRA merged on request, or GGUF.

The exported folder holds the weights (safetensors), the tokenizer and `tunesmith.json`, so
`AutoModelForCausalLM.from_pretrained(out)` loads it anywhere and `tunesmith chat/serve out` still uses the
template the run was trained with. Merging goes through the same `models.load_model_for` that generation uses, so the
exported model answers exactly as the run does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ExportConfig, ModelConfig
from tunesmith.errors import ModelError, RunError
from tunesmith.runs import RUN_INFO_FILE, atomic_dir, atomic_write_json, locate_model, read_run_info


@dataclass(frozen=True)
class ExportResult:
    out: Path
    merged: bool
    gguf: Path | None = None


def _check_out(out: Path, run: Path) -> None:
    """Refuse to replace anything but an earlier export: the folder is rebuilt from scratch.

    Raises:
        RunError: `out` is the run itself, lies around it, or is a non-empty folder that is not an export.
    """
    out_abs, run_abs = out.resolve(), run.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents or run_abs in out_abs.parents:
        raise RunError(f"--out {out}: must be a folder outside the run {run}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        info = read_run_info(out) if out.is_dir() else None
        if not (info and info.get("exported_from")):
            raise RunError(f"--out {out}: exists and is not an earlier export; choose a new folder or delete it")


def export_run(run: str, out: str, settings: ExportConfig | None = None) -> ExportResult:
    """Write the run's model to `out` as a Hugging Face folder (and a GGUF file beside it with `settings.gguf`).

    A LoRA run without `merge` exports only its adapter (it needs the base model to load); with `merge` the
    adapter is folded into the base weights and the folder stands alone.

    Raises:
        RunError: not a run with a trained model; `out` would overwrite something else.
        ModelError: the base model cannot be loaded.
        TunesmithError: `gguf` for an architecture or an export the GGUF writer does not support.
    """
    import torch

    from tunesmith.models import load_model_for, load_tokenizer_for

    settings = settings or ExportConfig()
    merge, dtype, gguf = settings.merge, settings.dtype, settings.gguf
    model_dir, info = locate_model(run)
    if info is None:
        raise RunError(f"{run}: not a run folder with a trained model (no {RUN_INFO_FILE}); "
                       f"export takes a run made by `tunesmith train`")
    is_lora = (model_dir / "adapter_config.json").is_file()
    if gguf and is_lora and not merge:
        raise RunError("--gguf needs whole weights: add --merge to fold the LoRA adapter into the base model")
    out_path = Path(out)
    _check_out(out_path, Path(run))
    model_config = ModelConfig.model_validate({**info.get("model", {}), "name": info["base_model"]})
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    # Merge in fp32 (the adapter's small updates survive), then store in the asked precision.
    if is_lora and not merge:
        from peft import PeftModel

        from tunesmith.models import load_model

        model = PeftModel.from_pretrained(load_model(model_config, dtype=torch.float32), str(model_dir))
    else:
        model = load_model_for(model_dir, info, "finetuned", model_config, torch.float32, torch.device("cpu"))
    model = model.to(torch_dtype)
    tokenizer = load_tokenizer_for(model_dir, model_config)
    merged = is_lora and merge
    exported = {**info, "exported_from": str(Path(run).resolve()), "dtype": dtype}
    if merged:
        exported.update(method="full", merged_from=info.get("method"))
    gguf_file = None
    with atomic_dir(out_path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / RUN_INFO_FILE, exported)
        if gguf:
            name = f"{out_path.name}.{'bf16' if dtype == 'bf16' else 'f32'}.gguf"
            write_gguf(model, tokenizer, tmp, tmp / name, dtype)
            gguf_file = out_path / name
    return ExportResult(out_path, merged, gguf_file)


GGUF_PRE_TOKENIZERS = {
    # tokenizers' pre_tokenizer JSON (types only) -> llama.cpp's name for the same splitting rules
    ("ByteLevel",): "gpt-2",
    ("Digits", "ByteLevel"): "smollm",
}
"""Byte-level BPE pre-tokenizers whose llama.cpp counterpart is known; anything else is refused, not guessed."""


def _gguf_unsupported(reason: str) -> ModelError:
    return ModelError(f"--gguf is not supported for this model yet: {reason}. The Hugging Face folder is "
                      f"complete; convert it with llama.cpp's convert_hf_to_gguf.py instead")


def _pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer (GPT-2 style, as SmolLM2 uses).

    Raises:
        ModelError: a tokenizer kind the GGUF writer does not know how to describe.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise _gguf_unsupported("only byte-level BPE tokenizers (GPT-2 style) are written")
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if parts and parts[0].get("type") == "Digits" and not parts[0].get("individual_digits"):
        parts = []
    name = GGUF_PRE_TOKENIZERS.get(tuple(p.get("type") for p in parts))
    if name is None:
        raise _gguf_unsupported(f"pre-tokenizer {pre.get('type')!r} has no known llama.cpp counterpart")
    return name


def _gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id (byte-level form, as llama.cpp expects) and their types; unused ids are padded."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: t for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _llama_qk_permute(weight, n_head: int):
    """HF stores q/k rows in rotate-half order; llama.cpp's RoPE wants each pair of rows interleaved."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _llama_shape(config) -> tuple[float, int, int, int]:
    """(rope theta, heads, key/value heads, head size) of a llama config.

    Raises:
        ModelError: another architecture or rope scaling, which the writer does not describe.
    """
    if config.model_type != "llama":
        raise _gguf_unsupported(f"architecture {config.model_type!r} (only llama is written)")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise _gguf_unsupported(f"rope scaling {rope.get('rope_type')!r}")
    theta = rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    return float(theta), n_head, n_kv, head_dim


def _add_llama_metadata(writer, config, name: str, bf16: bool) -> None:
    import gguf

    theta, n_head, n_kv, head_dim = _llama_shape(config)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)


def _add_tokenizer(writer, tokenizer, tokenizer_dir: Path, vocab_size: int, pre: str) -> None:
    import gguf

    tokens, types = _gguf_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)


def _add_tensors(writer, model, bf16: bool) -> None:
    """Every weight under its GGUF name (the tied head once); matrices in bf16 when asked, norms always f32."""
    import gguf
    import numpy as np
    import torch

    config = model.config
    _, n_head, n_kv, _ = _llama_shape(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise _gguf_unsupported(f"no GGUF name for tensor {hf_name}")
        data = tensor.detach().to(torch.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _llama_qk_permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _llama_qk_permute(data, n_kv)
        array = data.numpy().astype(np.float32)
        if bf16 and array.ndim > 1:
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(name, array)


def write_gguf(model, tokenizer, tokenizer_dir: Path, path: Path, dtype: str) -> Path:
    """Write a llama-architecture model and its byte-level BPE tokenizer as one GGUF file (f32 or bf16 weights).

    Norms stay f32 as llama.cpp expects; q/k projections are permuted into llama.cpp's RoPE layout.

    Raises:
        ModelError: another architecture, rope scaling, or a tokenizer the writer cannot describe.
    """
    import gguf

    _llama_shape(model.config)  # refuse before anything is written
    pre = _pre_tokenizer_name(tokenizer)
    bf16 = dtype == "bf16"
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_llama_metadata(writer, model.config, path.stem, bf16)
    _add_tokenizer(writer, tokenizer, tokenizer_dir, model.config.vocab_size, pre)
    _add_tensors(writer, model, bf16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
