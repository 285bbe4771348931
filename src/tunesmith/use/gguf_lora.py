"""A LoRA run's adapter as a GGUF adapter, which llama.cpp applies to the base GGUF (`--lora`, Ollama's ADAPTER).

llama.cpp adds `scale * B @ A @ x` to each adapted matrix, with `scale = alpha / rank` read from
`adapter.lora.alpha`; so the alpha written is PEFT's own scaling times the rank, which also covers rsLoRA. The
B matrices of q/k projections get the same row permutation as the base weights (llama, Mistral), since they
produce those rows.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.use.gguf import (architecture_of, gguf_tensor_name, permute_for, qk_permute, shape_of, tensor_names,
                                unsupported, write_out)

PEFT_PREFIX = "base_model.model."


def lora_pairs(peft_model) -> list[tuple[str, object, object, float]]:
    """(HF weight name, A, B, scaling) of every adapted linear layer, A as (rank, in) and B as (out, rank).

    Raises:
        ModelError: the adapter trains whole modules too (`modules_to_save`), uses DoRA, or adapts embeddings,
            which a llama.cpp LoRA adapter cannot carry.
    """
    config = next(iter(peft_model.peft_config.values()))
    if getattr(config, "modules_to_save", None):
        raise unsupported(f"the adapter also trains whole modules ({', '.join(config.modules_to_save)}); "
                          f"export with --merge")
    if getattr(config, "use_dora", False):
        raise unsupported("DoRA adapters (use_dora) have no llama.cpp form; export with --merge")
    pairs = []
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or not len(lora_a):
            continue
        adapter = next(iter(lora_a.keys()))
        if adapter not in getattr(module, "lora_B", {}):
            raise unsupported(f"{name}: LoRA on embeddings; export with --merge")
        pairs.append((f"{name.removeprefix(PEFT_PREFIX)}.weight", lora_a[adapter].weight,
                      module.lora_B[adapter].weight, float(module.scaling[adapter])))
    if not pairs:
        raise ModelError("the adapter holds no LoRA layers to export")
    return pairs


def write_lora_gguf(peft_model, path: Path) -> Path:
    """Write a PEFT LoRA model's adapter as a llama.cpp GGUF adapter (f32, it is small).

    Raises:
        ModelError: an architecture the GGUF writer does not support, an adapter form llama.cpp lacks, or
            layers with different scalings (llama.cpp has one alpha per file).
    """
    import gguf
    import numpy as np
    import torch

    config = peft_model.get_base_model().config
    arch, shape, names = architecture_of(config), shape_of(config), tensor_names(config)
    pairs = lora_pairs(peft_model)
    ranks = {int(a.shape[0]) for _, a, _, _ in pairs}
    scalings = {round(s, 6) for *_, s in pairs}
    if len(ranks) != 1 or len(scalings) != 1:
        raise unsupported("layers with different ranks or alphas (llama.cpp reads one alpha per adapter)")
    writer = gguf.GGUFWriter(str(path), arch.gguf_name)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, pairs[0][3] * ranks.pop())
        for hf_name, a, b, _ in pairs:
            name = gguf_tensor_name(names, hf_name)
            b = b.detach().to(torch.float32)
            heads = permute_for(hf_name, arch, shape)
            if heads is not None:
                b = qk_permute(b, heads)
            writer.add_tensor(f"{name}.lora_a", a.detach().to(torch.float32).numpy().astype(np.float32))
            writer.add_tensor(f"{name}.lora_b", b.numpy().astype(np.float32))
        write_out(writer)
    finally:
        writer.close()
    return path
