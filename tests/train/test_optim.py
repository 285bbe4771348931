"""The optimizer: AdamW and Adafactor alike leave biases and norms (1-D parameters) undecayed."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import TrainingConfig
from tunesmith.train.optim import build_optimizer


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def decay_by_parameter(optimizer, model) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_matrices_decay_and_biases_and_norms_do_not(name):
    model = Block()
    optimizer = build_optimizer(model, TrainingConfig(optimizer=name, weight_decay=0.1), 1e-3)
    assert decay_by_parameter(optimizer, model) == {"linear.weight": 0.1, "linear.bias": 0.0, "norm.weight": 0.0,
                                                    "norm.bias": 0.0}


def test_adafactor_leaves_a_norm_gain_undecayed_by_a_step():
    """With a zero gradient only weight decay could move a parameter."""
    model = Block()
    optimizer = build_optimizer(model, TrainingConfig(optimizer="adafactor", weight_decay=0.5), 0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    gain, weight = model.norm.weight.detach().clone(), model.linear.weight.detach().clone()
    optimizer.step()
    assert torch.equal(model.norm.weight, gain)
    assert not torch.equal(model.linear.weight, weight)
