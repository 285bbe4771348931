"""Precision at work: bf16/fp16 autocast around forward passes (master weights stay fp32), or none for fp32."""

from __future__ import annotations

import contextlib

import torch


def autocast_for(precision: str, device: torch.device):
    """bf16/fp16 autocast around forward passes (weights stay fp32), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
