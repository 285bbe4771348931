"""`tokenization.padding_side` reaches unpacked batches; positions count from each example's first real token,
so left and right padding give the same loss and gradients."""

from __future__ import annotations

import pytest
import torch

from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.losses import CausalLMLoss
from tunesmith.modeling.packing import register_packed_attention
from tunesmith.prepare.tokenization import IGNORE_INDEX

VOCAB = 96
EXAMPLES = [{"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]},
            {"input_ids": [10, 11, 12], "labels": [IGNORE_INDEX, 11, 12]}]


def test_left_padding_puts_pads_first_and_counts_positions_from_the_first_real_token():
    batch = make_batch(EXAMPLES, False, 0, 0, padding_side="left")
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 11, 12]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]


def test_right_padding_stays_the_default():
    assert make_batch(EXAMPLES, False, 0, 0)["input_ids"].tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]]


def test_packed_rows_ignore_the_padding_side():
    left, right = make_batch(EXAMPLES, True, 4, 0, "left"), make_batch(EXAMPLES, True, 4, 0, "right")
    assert all(torch.equal(left[k], right[k]) for k in right)


def tiny_llama(attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         pad_token_id=0, initializer_range=0.2))
    model.set_attn_implementation(attention)
    return model


@pytest.mark.parametrize("attention", ["eager", "sdpa", "packed"])
def test_left_and_right_padding_give_the_same_loss_and_gradients(attention):
    model = tiny_llama(register_packed_attention() if attention == "packed" else attention)
    results = []
    for side in ("left", "right"):
        model.zero_grad(set_to_none=True)
        loss = CausalLMLoss(model)(**make_batch(EXAMPLES, False, 0, 0, side))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (left_loss, left), (right_loss, right) = results
    torch.testing.assert_close(left_loss, right_loss, rtol=1e-5, atol=1e-5)
    for name in right:
        assert torch.isfinite(left[name]).all(), name
        torch.testing.assert_close(left[name], right[name], rtol=1e-4, atol=1e-4, msg=name)  # grads ~1
