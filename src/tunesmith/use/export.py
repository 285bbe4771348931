"""Export a run's model for use outside tunesmith: a plain Hugging Face folder, LoRA merged on request, GGUF.

The exported folder holds the weights (safetensors), the tokenizer and `tunesmith.json`, so
`AutoModelForCausalLM.from_pretrained(out)` loads it anywhere and `tunesmith chat/serve out` still uses the
template the run was trained with. Merging goes through the same `models.load_model_for` that generation uses, so the
exported model answers exactly as the run does.

With GGUF (`use.gguf`) the folder also holds `<name>.<quant>.gguf` carrying the run's chat template and end
tokens (`use.gguf_chat`); a LoRA run exported without merging gets its base as GGUF and its adapter as a GGUF
adapter (`use.gguf_lora`). `--ollama` adds a Modelfile, and `--verify N` answers N held-out prompts through
llama.cpp and through the run and compares their tokens (`use.gguf_verify`), after the folder is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ExportConfig, ModelConfig
from tunesmith.errors import ModelError, RunError
from tunesmith.runs import (RUN_INFO_FILE, atomic_dir, atomic_write_json, atomic_write_text, locate_model,
                            read_run_info)

VERIFY_FILE = "verify.json"
"""The --verify report, beside the GGUF it checked."""


@dataclass(frozen=True)
class ExportResult:
    out: Path
    merged: bool
    gguf: Path | None = None
    adapter: Path | None = None
    """The GGUF LoRA adapter of an unmerged LoRA run (`gguf` is then its base)."""
    modelfile: Path | None = None
    verification: object | None = None
    """A `gguf_verify.VerifyReport` with --verify."""
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


def _check_gguf_settings(settings: ExportConfig) -> str:
    """The GGUF type to write, checked before any model is loaded.

    Raises:
        ModelError: a type that needs llama-cpp-python (or --verify) without it installed.
    """
    from tunesmith.use.gguf import LLAMA_CPP_TYPES, check_quant, import_llama_cpp

    quant = check_quant(settings.quant or ("bf16" if settings.dtype == "bf16" else "f32"))
    if quant in LLAMA_CPP_TYPES:
        import_llama_cpp(f"--quant {quant}")
    if settings.verify:
        import_llama_cpp("--verify")
    return quant


def _load(model_dir: Path, info: dict, model_config: ModelConfig, is_lora: bool, merge: bool):
    """The run's model in fp32 on the CPU: merged, or (a LoRA run without merge) the PEFT model itself.

    Merging in fp32 keeps the adapter's small updates; the export casts afterwards.
    """
    import torch

    from tunesmith.models import load_model, load_model_for

    if is_lora and not merge:
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(model_config, dtype=torch.float32), str(model_dir))
    return load_model_for(model_dir, info, "finetuned", model_config, torch.float32, torch.device("cpu"))


def _chat_metadata(template, tokenizer, need_turns: bool):
    """The GGUF's chat metadata and the run's template as turns (None when it cannot be described as turns:
    the GGUF then keeps the tokenizer's own chat template, and --ollama is refused).

    Raises:
        ModelError: `need_turns` (--ollama) and the template cannot be written as turns.
    """
    from tunesmith.prepare.tokenization import special_prefix
    from tunesmith.use.generation import end_token_ids
    from tunesmith.use.gguf import ChatMetadata
    from tunesmith.use.gguf_chat import jinja_chat_template, turn_format

    try:
        fmt = turn_format(template, tokenizer)
    except ModelError:
        if need_turns:
            raise
        fmt = None
    chat_template = jinja_chat_template(fmt) if fmt else getattr(tokenizer, "chat_template", None) or ""
    return ChatMetadata(chat_template, sorted(end_token_ids(tokenizer)), bool(special_prefix(tokenizer))), fmt


def _write_model_gguf(model, tokenizer, folder: Path, path: Path, quant: str, chat) -> Path:
    """One GGUF of `model` in `quant`: written directly, or written in f32 and quantized by llama.cpp."""
    from tunesmith.use.gguf import DIRECT_TYPES, quantize_gguf, write_gguf

    if quant in DIRECT_TYPES:
        return write_gguf(model, tokenizer, folder, path, quant, chat)
    full = path.with_name(path.name + ".f32.tmp")
    try:
        write_gguf(model, tokenizer, folder, full, "f32", chat)
        return quantize_gguf(full, path, quant)
    finally:
        full.unlink(missing_ok=True)


def _write_ggufs(model, base, tokenizer, tmp: Path, stem: str, quant: str, chat) -> tuple[str, str | None]:
    """The GGUF file names written into `tmp`: the model's, or for an unmerged LoRA run the base's and the
    adapter's."""
    from tunesmith.use.gguf_lora import write_lora_gguf

    if base is None:
        name = f"{stem}.{quant}.gguf"
        _write_model_gguf(model, tokenizer, tmp, tmp / name, quant, chat)
        return name, None
    name, adapter = f"{stem}.base.{quant}.gguf", f"{stem}.lora.gguf"
    _write_model_gguf(base, tokenizer, tmp, tmp / name, quant, chat)
    write_lora_gguf(model, tmp / adapter)
    return name, adapter


def _write_ollama(tmp: Path, stem: str, gguf_name: str, adapter: str | None, fmt, tokenizer, chat) -> None:
    from tunesmith.use.gguf_chat import modelfile, ollama_readme, stop_texts

    atomic_write_text(tmp / "Modelfile", modelfile(gguf_name, fmt, stop_texts(tokenizer, fmt, chat.end_token_ids),
                                                   adapter))
    atomic_write_text(tmp / "README.md", ollama_readme(stem.lower()))


def export_run(run: str, out: str, settings: ExportConfig | None = None, progress: bool = True) -> ExportResult:
    """Write the run's model to `out` as a Hugging Face folder, and with GGUF settings a GGUF file beside it.

    A LoRA run without `merge` exports only its adapter (it needs the base model to load), and as GGUF its base
    model plus a GGUF adapter; with `merge` the adapter is folded into the base weights and the folder stands
    alone. `settings.verify` runs after the folder is complete; its report is returned and saved as `verify.json`
    (the caller decides what a failed check means: the CLI exits non-zero).

    Raises:
        RunError: not a run with a trained model; `out` would overwrite something else; --verify without a test split.
        ModelError: the base model cannot be loaded; a GGUF export this model, its tokenizer or template does not
            support (naming what is); llama-cpp-python missing for a type or check that needs it.
    """
    import torch

    from tunesmith.config import TemplateConfig
    from tunesmith.models import load_model, load_tokenizer_for

    settings = settings or ExportConfig()
    merge, dtype, gguf = settings.merge, settings.dtype, settings.writes_gguf
    model_dir, info = locate_model(run)
    if info is None:
        raise RunError(f"{run}: not a run folder with a trained model (no {RUN_INFO_FILE}); "
                       f"export takes a run made by `tunesmith train`")
    is_lora = (model_dir / "adapter_config.json").is_file()
    quant = _check_gguf_settings(settings) if gguf else None
    out_path = Path(out)
    _check_out(out_path, Path(run))
    model_config = ModelConfig.model_validate({**info.get("model", {}), "name": info["base_model"]})
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model = _load(model_dir, info, model_config, is_lora, merge)
    tokenizer = load_tokenizer_for(model_dir, model_config)
    merged = is_lora and merge
    base = load_model(model_config, dtype=torch.float32) if gguf and is_lora and not merge else None
    if gguf:
        from tunesmith.use.gguf import architecture_of, pre_tokenizer_name, shape_of

        config = (base or model).config
        architecture_of(config), shape_of(config), pre_tokenizer_name(tokenizer)  # refuse before writing
        template = TemplateConfig.model_validate(info.get("template") or {})
        chat, fmt = _chat_metadata(template, tokenizer, settings.ollama)
    exported = {**info, "exported_from": str(Path(run).resolve()), "dtype": dtype}
    if merged:
        exported.update(method="full", merged_from=info.get("method"))
    gguf_name = adapter_name = None
    with atomic_dir(out_path) as tmp:
        tokenizer.save_pretrained(tmp)  # first: the GGUF writer reads the merges and special tokens from there
        if gguf:  # from the fp32 weights, so a bf16 folder does not round the GGUF's weights twice
            gguf_name, adapter_name = _write_ggufs(model, base, tokenizer, tmp, out_path.name, quant, chat)
            if settings.ollama:
                _write_ollama(tmp, out_path.name, gguf_name, adapter_name, fmt, tokenizer, chat)
        model.to(torch_dtype).save_pretrained(tmp)
        atomic_write_json(tmp / RUN_INFO_FILE, exported)
    result = ExportResult(out_path, merged, gguf=out_path / gguf_name if gguf_name else None,
                          adapter=out_path / adapter_name if adapter_name else None,
                          modelfile=out_path / "Modelfile" if settings.ollama else None)
    if settings.verify:
        from dataclasses import replace

        from tunesmith.use.gguf_verify import verify_gguf

        report = verify_gguf(run, result.gguf, quant, settings.verify, settings.verify_max_new_tokens,
                             lora_path=result.adapter, progress=progress)
        atomic_write_json(out_path / VERIFY_FILE, report.to_dict())
        result = replace(result, verification=report)
    return result
