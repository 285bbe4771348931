"""Packed rows meet the attention as rows (mask-based attention, every CPU) or flattened into one row (flash
attention, which finds packed examples only at batch size 1): either way the same loss and gradients."""

from __future__ import annotations

import pytest
import torch

from tunesmith.modeling import losses, packing
from tunesmith.modeling.batches import flatten_packed, make_batch
from tunesmith.modeling.losses import CausalLMLoss
from tunesmith.modeling.packing import ONE_ROW, PACKED_ATTENTION, ROWS, attention_plan, register_packed_attention
from tunesmith.prepare.tokenization import IGNORE_INDEX

VOCAB = 96
SPY = "tunesmith_test_varlen"


@pytest.mark.parametrize("device, implementation, plan", [
    ("cpu", PACKED_ATTENTION, ROWS),
    ("cpu", "eager", ROWS),
    ("cpu", "sdpa", ROWS),
    ("cpu", "flash_attention_2", ROWS),
    ("cuda", "flash_attention_2", ONE_ROW),
    ("cuda", "flash_attention_3", ONE_ROW),
    ("cuda", "kernels-community/flash-attn3", ONE_ROW),
    ("cuda", "sdpa", ROWS),
    ("cuda", "eager", ROWS),
    ("cuda", "flex_attention", ROWS),
    ("cuda", "something_new", ONE_ROW),
])
def test_attention_plan_by_device_and_implementation(device, implementation, plan):
    assert attention_plan(device, implementation) == plan


def test_flatten_packed_lays_rows_end_to_end():
    batch = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "position_ids": torch.tensor([[0, 1, 0], [0, 1, 0]]),
             "labels": torch.tensor([[IGNORE_INDEX, 6, IGNORE_INDEX], [IGNORE_INDEX, 9, IGNORE_INDEX]])}
    flat = flatten_packed(batch)
    assert flat["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0]]
    assert flat["position_ids"].tolist() == [[0, 1, 0, 0, 1, 0]]
    assert flat["labels"].tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert batch["labels"][1, 0] == IGNORE_INDEX  # the input is left as it was


def test_a_row_start_never_becomes_a_label():
    """Even a row whose first label were set, the shift across the row boundary must not add a loss."""
    batch = {"input_ids": torch.tensor([[5, 6], [7, 8]]), "position_ids": torch.tensor([[0, 1], [0, 1]]),
             "labels": torch.tensor([[5, 6], [7, 8]])}
    assert flatten_packed(batch)["labels"].tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX, 8]]


def tiny_llama(attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         pad_token_id=0, initializer_range=0.2))
    model.set_attn_implementation(attention)
    return model.eval()


def packed_batch():
    generator = torch.Generator().manual_seed(1)
    examples = []
    for i in range(7):
        length = 5 + 3 * i
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 3 + ids[3:]})
    batch = make_batch(examples, True, 40, 0)
    assert len(batch["input_ids"]) > 2
    return batch


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = CausalLMLoss(model)(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_flattened_batch_gives_the_rows_loss_and_gradients(attention):
    """eager and sdpa on a CPU find packed examples from position_ids at batch size 1 too."""
    model, batch = tiny_llama(attention), packed_batch()
    rows_loss, rows = loss_and_grads(model, batch)
    flat_loss, flat = loss_and_grads(model, flatten_packed(batch))
    torch.testing.assert_close(flat_loss, rows_loss, rtol=1e-5, atol=1e-5)
    for name in rows:
        torch.testing.assert_close(flat[name], rows[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture
def varlen_spy():
    """An attention implementation that is not mask-based (as flash attention), recording each call's batch size;
    it computes sdpa under transformers' packed mask so the numbers can be checked."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    batch_sizes = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        batch_sizes.append(query.shape[0])
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(SPY, spy)
    AttentionMaskInterface.register(SPY, sdpa_mask)
    yield batch_sizes
    for interface in (AttentionInterface, AttentionMaskInterface):
        getattr(interface, "_global_mapping", {}).pop(SPY, None)


def test_a_multi_row_packed_batch_is_never_passed_to_flash_like_attention(varlen_spy, monkeypatch):
    """On a GPU (the plan asked as for cuda), CausalLMLoss flattens the rows: the attention sees one row only."""
    batch = packed_batch()
    expected = CausalLMLoss(tiny_llama("sdpa"))(**batch).detach()
    monkeypatch.setattr(losses, "attention_plan", lambda device, implementation: packing.attention_plan(
        "cuda", implementation))
    model = tiny_llama(SPY)
    summed, grads = loss_and_grads(model, batch)
    assert varlen_spy and set(varlen_spy) == {1}
    torch.testing.assert_close(summed, expected, rtol=1e-5, atol=1e-5)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("attention", ["sdpa", "packed"])
def test_a_cuda_plan_keeps_the_rows_of_mask_based_attention(attention, monkeypatch):
    """sdpa's mask is made per row: one row of all tokens would only make it larger."""
    monkeypatch.setattr(losses, "attention_plan", lambda device, implementation: packing.attention_plan(
        "cuda", implementation))
    monkeypatch.setattr(losses, "flatten_packed", lambda batch: pytest.fail("rows flattened"))
    model = tiny_llama(register_packed_attention() if attention == "packed" else attention)
    with torch.no_grad():
        CausalLMLoss(model)(**packed_batch())


def test_a_cpu_keeps_its_per_example_rows(varlen_spy, monkeypatch):
    """On a CPU the rows go to the model as they are, whatever the attention (today's path, unchanged)."""
    monkeypatch.setattr(losses, "flatten_packed", lambda batch: pytest.fail("rows flattened on a CPU"))
    batch = packed_batch()
    with torch.no_grad():
        per_example = CausalLMLoss(tiny_llama(register_packed_attention()))(**batch)
        CausalLMLoss(tiny_llama(SPY))(**batch)
    assert max(varlen_spy) == len(batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(per_example, CausalLMLoss(tiny_llama("sdpa"))(**batch), rtol=1e-5, atol=1e-5)
