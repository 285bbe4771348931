"""Gradient accumulation normalizes by the loss tokens of the whole step, so micro-batching changes nothing
(the two-process runs are in test_multiprocess.py)."""

from __future__ import annotations

import torch

from tunesmith.config import TrainingConfig
from tunesmith.prepare.tokenization import IGNORE_INDEX


def test_accumulating_2x4_gives_the_gradient_of_one_batch_of_8(tiny_model_dir):
    """Examples of different lengths: the mean of micro-batch means would differ; the token-normalized sum does not."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from tunesmith.modeling.batches import make_batch
    from tunesmith.modeling.losses import CausalLMLoss
    from tunesmith.train.distributed import accumulate_gradients
    from tunesmith.train.schedule import step_examples

    g = torch.Generator().manual_seed(1)
    examples = []
    for n in [5, 17, 9, 30, 3, 12, 22, 7]:
        ids = torch.randint(10, 49000, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 3) + ids[n // 3:]})
    loss_model = CausalLMLoss(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)).eval()

    def gradient(batch_size, accumulation, packing=True):
        loss_model.zero_grad(set_to_none=True)
        training = TrainingConfig(batch_size=batch_size, gradient_accumulation_steps=accumulation, seed=3)
        parts = step_examples(0, len(examples), training)
        assert len(parts) == accumulation and sorted(sum(parts, [])) == list(range(8))
        batches = [make_batch([examples[i] for i in part], packing, 64, 2) for part in parts]
        accumulate_gradients(loss_model, batches, Accelerator(cpu=True), "fp32")
        return torch.cat([p.grad.flatten() for p in loss_model.parameters()])

    single = gradient(8, 1)
    torch.testing.assert_close(gradient(2, 4), single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradient(2, 4, packing=False), single, rtol=1e-5, atol=1e-5)

    # the naive mean of per-micro-batch means is measurably different on these lengths
    loss_model.zero_grad(set_to_none=True)
    for part in step_examples(0, 8, TrainingConfig(batch_size=2, gradient_accumulation_steps=4, seed=3)):
        batch = make_batch([examples[i] for i in part], True, 64, 2)
        (loss_model(**batch) / (batch["labels"][:, 1:] != IGNORE_INDEX).sum() / 4).backward()
    naive = torch.cat([p.grad.flatten() for p in loss_model.parameters()])
    assert (naive - single).abs().max() > 1e-4
