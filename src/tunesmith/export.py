"""Export a run's model for use outside tunesmith: a plain Hugging Face folder, LoRA merged on request, or GGUF.

The exported folder holds the weights (safetensors), the tokenizer and `tunesmith.json`, so
`AutoModelForCausalLM.from_pretrained(out)` loads it anywhere and `tunesmith chat/serve out` still uses the
template the run was trained with. Merging goes through the same `load_model_for` that generation uses, so the
exported model answers exactly as the run does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ModelConfig
from tunesmith.errors import RunError
from tunesmith.generate import RUN_INFO_FILE, load_model_for, locate_model, read_run_info
from tunesmith.runs import atomic_dir, atomic_write_json

DTYPES = ("bf16", "fp32")


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


def export_run(run: str, out: str, merge: bool = False, dtype: str = "fp32", gguf: bool = False) -> ExportResult:
    """Write the run's model to `out` as a Hugging Face folder (and a GGUF file beside it with `gguf`).

    A LoRA run without `merge` exports only its adapter (it needs the base model to load); with `merge` the
    adapter is folded into the base weights and the folder stands alone.

    Raises:
        RunError: not a run with a trained model; `out` would overwrite something else.
        ModelError: the base model cannot be loaded.
        TunesmithError: `gguf` for an architecture or an export the GGUF writer does not support.
    """
    import torch

    from tunesmith.generate import load_tokenizer_for

    if dtype not in DTYPES:
        raise RunError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
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
