"""The speed choices of training, made by device in this one place: what pays off on a CPU costs on a GPU.

On a CPU (measured on 2 cores, SmolLM2-135M) the run is bound by memory traffic and page faults, so:
- bf16 working weights (bf16_weights.py): matrix weights cast once per step, or once per run for LoRA's frozen
  base, instead of by autocast in every forward and backward (~10% of a step), with persistent fp32 gradient
  buffers (fresh ones fault their pages in anew, ~9% of a full-finetuning step);
- fp32 sums of the LoRA updates (`model.keep_lora_sums_fp32`), so early, small adapters stay visible in bf16;
- attention per example of the packed rows (`modeling.packing`), 3x less attention time than eager.

On a GPU the same tricks cost memory for nothing: bf16 copies and persistent fp32 buffers are +14 GB and +28 GB
for a 7B model, and fp32 LoRA sums double the saved activations. There training runs under plain autocast, with
the LoRA base loaded directly in bf16 (not fp32, then cast), and transformers' own attention.

Under FSDP (sharding.py) the bf16 working weights are off on any device: their copies would be made of the
sharded parameters and run the forward past FSDP's gathering. The fp32 LoRA sums (forward hooks), the packed
attention and the fused loss work on the gathered weights as on plain ones and stay.

The fused loss's softmax block (`modeling.losses.softmax_rows`) is chosen by device too, but inside the loss:
evaluation runs it as well, and the modeling layer sits below training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpeedChoices:
    """How this run trains fastest on its device; none of them changes what is learned beyond rounding."""

    bf16_weights: bool
    """bf16 working copies of the trainable weights (with persistent fp32 gradient buffers) and LoRA's frozen base
    cast to bf16 in place, restored in fp32 at the end (bf16_weights.py)."""
    fp32_lora_sums: bool
    """Hooks that return each LoRA base layer's output in fp32, so PEFT adds the update in fp32."""
    packed_attention: bool
    """Attention per example of the packed rows instead of transformers' attention under a packed mask."""
    lora_base_dtype: torch.dtype
    """The dtype LoRA's frozen base is loaded in (full finetuning always loads fp32 masters)."""


def speed_choices(device_type: str, method: str, precision: str, sharded: bool = False) -> SpeedChoices:
    """The speed choices for a device type ("cpu", "cuda"), a training method, a resolved precision, and whether
    FSDP shards the model.

    >>> speed_choices("cuda", "lora", "bf16").lora_base_dtype
    torch.bfloat16
    >>> speed_choices("cpu", "full", "bf16").bf16_weights, speed_choices("cpu", "full", "bf16", sharded=True).bf16_weights
    (True, False)
    """
    if device_type == "cpu":
        return SpeedChoices(bf16_weights=precision == "bf16" and not sharded,
                            fp32_lora_sums=precision != "fp32" and method != "full",
                            packed_attention=method != "qlora", lora_base_dtype=torch.float32)
    return SpeedChoices(bf16_weights=False, fp32_lora_sums=False, packed_attention=False,
                        lora_base_dtype=torch.bfloat16 if method == "lora" and precision == "bf16" else torch.float32)
