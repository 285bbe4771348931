"""The test loss during training runs through the module inside the DDP wrapper, reducing only its two sums:
a process with no test example (2 processes, 1 test example) reaches the same collectives as the others."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tunesmith.config import TrainingConfig
from tunesmith.modeling.losses import CausalLMLoss
from tunesmith.prepare.tokenization import IGNORE_INDEX
from tunesmith.train.distributed import evaluate_loss

EXAMPLE = {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9, 10]}


def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=0))


RANK_SCRIPT = inspect.getsource(tiny_llama) + textwrap.dedent("""
    import json, os, sys
    from accelerate import Accelerator
    from tunesmith.config import TrainingConfig
    from tunesmith.modeling.losses import CausalLMLoss
    from tunesmith.train.distributed import evaluate_loss

    accelerator = Accelerator(cpu=True)
    loss_model = accelerator.prepare(CausalLMLoss(tiny_llama()))
    examples = [json.loads(sys.argv[2])]
    losses = [evaluate_loss(loss_model, examples, TrainingConfig(batch_size=2), 64, 0, "fp32", accelerator)
              for _ in range(2)]
    with open(f"{sys.argv[1]}/rank{accelerator.process_index}.json", "w") as f:
        json.dump({"type": type(loss_model).__name__, "losses": losses}, f)
""")


class Wrapper(torch.nn.Module):
    """Stands for DDP: the module inside, and a forward that must not run during evaluation."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, **batch):
        raise AssertionError("evaluation ran through the DDP wrapper")


class TwoProcesses:
    """accelerate's side of one of two processes; `reduce` adds the other process's sums, which it is given."""

    def __init__(self, rank: int, others: torch.Tensor):
        self.process_index, self.num_processes, self.device = rank, 2, torch.device("cpu")
        self.others, self.reduced = others, []

    def unwrap_model(self, model):
        return model.module

    def reduce(self, tensor, reduction):
        self.reduced.append(tensor.clone())
        return tensor + self.others


def test_a_process_without_test_examples_only_reduces_the_two_sums():
    model = CausalLMLoss(tiny_llama())
    wrapped = Wrapper(model)
    with torch.no_grad():
        summed = model(**{k: torch.tensor([v]) for k, v in EXAMPLE.items()}).double()
    tokens = sum(t != IGNORE_INDEX for t in EXAMPLE["labels"][1:])
    training = TrainingConfig(batch_size=2)

    second = TwoProcesses(rank=1, others=torch.tensor([summed.item(), tokens], dtype=torch.float64))
    loss = evaluate_loss(wrapped, [EXAMPLE], training, 64, 0, "fp32", second)
    assert len(second.reduced) == 1 and second.reduced[0].tolist() == [0.0, 0.0]
    assert loss == pytest.approx(summed.item() / tokens, rel=1e-6)

    first = TwoProcesses(rank=0, others=torch.zeros(2, dtype=torch.float64))
    assert evaluate_loss(wrapped, [EXAMPLE], training, 64, 0, "fp32", first) == pytest.approx(loss, rel=1e-9)
    assert len(first.reduced) == 1 and first.reduced[0][1].item() == tokens
    assert model.training  # back to training mode


# slow: two gloo processes (~12 s); the single-process reduction test above runs by default
@pytest.mark.slow
def test_two_gloo_processes_and_one_test_example_agree_on_the_test_loss(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), str(tmp_path), json.dumps(EXAMPLE)],
                              capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["type"] == "DistributedDataParallel"
    with torch.no_grad():
        expected = CausalLMLoss(tiny_llama())(**{k: torch.tensor([v]) for k, v in EXAMPLE.items()}).item() / 4
    for rank in ranks:
        assert len(rank["losses"]) == 2
        for loss in rank["losses"]:
            assert abs(loss - expected) < 1e-5
