"""Packing: rows within budget, positions restarting per example, and the same loss and gradients as unpacked."""

from __future__ import annotations

import pytest
import torch

from tunesmith.modeling import packing
from tunesmith.modeling.packing import (collate_packed, example_spans, length_buckets, pack_rows, packed_attention,
                                        packed_layout, register_packed_attention)
from tunesmith.modeling.batches import pad_collate
from tunesmith.prepare.tokenization import IGNORE_INDEX


class TestPackRows:
    @pytest.mark.parametrize("lengths,budget", [([5, 3, 4, 2], 8), ([1] * 10, 3), ([7, 7, 7], 7),
                                                 ([12, 2, 9, 3, 30, 1], 16), ([], 4)])
    def test_rows_respect_budget_and_hold_every_example_once(self, lengths, budget):
        rows = pack_rows(lengths, budget)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        for row in rows:
            assert len(row) == 1 or sum(lengths[i] for i in row) <= budget

    def test_example_longer_than_budget_gets_its_own_row(self):
        assert [0] in pack_rows([20, 3, 3], 8)

    def test_packs_tighter_than_one_example_per_row(self):
        assert len(pack_rows([6, 2, 5, 3, 4, 4], 8)) == 3


def examples_of_lengths(lengths, prompt=3, seed=0):
    """Examples whose first `prompt` labels are masked, like tokenized prompt/answer pairs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(10, 49000, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * min(prompt, n - 1) + ids[min(prompt, n - 1):]})
    return out


class TestCollatePacked:
    def test_position_ids_restart_at_zero_for_each_example(self):
        batch = collate_packed(examples_of_lengths([4, 3, 2]), max_row_tokens=9, pad_token_id=0)
        assert batch["input_ids"].shape == (1, 9)
        assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]

    def test_first_label_of_each_example_and_padding_are_masked(self):
        examples = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
                    {"input_ids": [4, 4, 4, 4], "labels": [4, 4, 4, 4]}]
        batch = collate_packed(examples, max_row_tokens=5, pad_token_id=0)
        assert batch["input_ids"].tolist() == [[4, 4, 4, 4, 0], [5, 6, 7, 8, 9]]
        assert batch["labels"].tolist() == [[-100, 4, 4, 4, -100], [-100, 6, 7, -100, 9]]
        assert "attention_mask" not in batch  # a 2-D mask would switch off the per-example attention


class TestPackedLayout:
    def test_examples_start_where_positions_stop_growing_by_one(self):
        assert example_spans([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]) == [(0, 3), (3, 2), (6, 4)]

    def test_one_token_examples_and_padding_have_no_span(self):
        assert example_spans([[0, 0, 0, 1, 0]]) == [(2, 2)]

    def test_similar_lengths_share_a_bucket_and_a_long_one_does_not_inflate_the_short(self):
        assert length_buckets([300, 20, 25, 310]) == [[3, 0], [2, 1]]
        assert length_buckets([70, 65, 72, 70]) == [[2, 0, 3, 1]]
        assert length_buckets([]) == []

    def test_scatter_sends_padding_to_the_zero_row_and_every_token_to_its_own_place(self):
        layout = packed_layout(torch.tensor([[0, 1, 2, 0, 1, 0]]))
        (gather,) = layout.gather
        assert gather.tolist() == [[0, 1, 2], [3, 4, 4]]  # the shorter example repeats its last position
        assert layout.scatter.tolist() == [0, 1, 2, 3, 4, 6]  # 6 = the zero row after 2 x 3 outputs


def block_diagonal_attention(query, key, value, position_ids, scaling):
    """Reference: every query against every key of its row, masked to its own example and the past (fp32)."""
    example = (position_ids != torch.roll(position_ids, 1, dims=1) + 1).long().cumsum(1)
    allowed = (example[:, :, None] == example[:, None, :]) & torch.ones(position_ids.shape[1], position_ids.shape[1],
                                                                        dtype=torch.bool).tril()
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    scores = (query @ key.transpose(2, 3) * scaling).masked_fill(~allowed[:, None], float("-inf"))
    return (scores.softmax(-1) @ value).transpose(1, 2)


@pytest.mark.parametrize("bucket_overhead", [0, packing.BUCKET_OVERHEAD], ids=["many-buckets", "one-bucket"])
def test_packed_attention_equals_block_diagonal_attention_with_grouped_heads(monkeypatch, bucket_overhead):
    monkeypatch.setattr(packing, "BUCKET_OVERHEAD", bucket_overhead)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 0], [0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 0, 0]])
    layout = packed_layout(position_ids)
    assert len(layout.gather) > 1 if bucket_overhead == 0 else len(layout.gather) == 1
    torch.manual_seed(0)
    query = torch.randn(2, 4, 12, 8, requires_grad=True)
    key, value = torch.randn(2, 2, 12, 8, requires_grad=True), torch.randn(2, 2, 12, 8, requires_grad=True)
    expected = block_diagonal_attention(query, key, value, position_ids, 0.3)
    got, _ = packed_attention(torch.nn.Module(), query, key, value, None, scaling=0.3, packed_layout=layout)
    real = (layout.scatter < layout.scatter.max()).view(2, 12)  # positions in an example of 2+ tokens
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-6)
    assert not got[~real].any()  # one-token examples and padding: nothing attends to them, no loss reads them
    weights = torch.randn_like(expected) * real[:, :, None, None]
    grads = torch.autograd.grad((got * weights).sum(), (query, key, value))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (query, key, value))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module", params=["sdpa", "eager", "packed"])
def loss_model(tiny_model_dir, request):
    """Every attention path: sdpa (GPU, evaluation), eager, and per-example attention (the trainer's on CPU)."""
    from transformers import AutoModelForCausalLM

    from tunesmith.modeling.losses import CausalLMLoss

    name = register_packed_attention() if request.param == "packed" else request.param
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=name)
    return CausalLMLoss(model).eval()


def loss_and_grads(loss_model, batch):
    loss_model.zero_grad(set_to_none=True)
    loss = loss_model(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in loss_model.named_parameters()}


@pytest.mark.parametrize("prompt", [3, 0], ids=["answers-only", "every-token"])
def test_packed_loss_and_gradients_equal_unpacked(loss_model, prompt):
    """`every-token` labels the first token of each example too, which must not leak across a packed boundary."""
    from tunesmith.modeling.batches import make_batch

    examples = examples_of_lengths([9, 4, 13, 6, 2, 11], prompt=prompt)
    packed = make_batch(examples, packing=True, max_row_tokens=16, pad_token_id=2)
    unpacked = make_batch(examples, packing=False, max_row_tokens=16, pad_token_id=2)
    assert packed["input_ids"].numel() < unpacked["input_ids"].numel()
    loss_p, grads_p = loss_and_grads(loss_model, packed)
    loss_u, grads_u = loss_and_grads(loss_model, unpacked)
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-5, atol=1e-5)
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-5, atol=1e-5, msg=name)


def test_a_2d_attention_mask_would_let_packed_examples_see_each_other(loss_model):
    """Verifies, on the installed transformers, the fact packing relies on: only WITHOUT a 2-D mask are packed
    examples kept apart; an all-ones mask silently mixes them (so the trainer must never pass one)."""
    examples = examples_of_lengths([7, 8])
    packed = collate_packed(examples, max_row_tokens=16, pad_token_id=2)
    separate = sum(loss_model(**pad_collate([e], 2)).item() for e in examples)
    with torch.no_grad():
        assert loss_model(**packed).item() == pytest.approx(separate, rel=1e-5)
        mixed = loss_model(**packed, attention_mask=torch.ones_like(packed["input_ids"])).item()
    assert mixed != pytest.approx(separate, rel=1e-3)


def test_unpacked_batches_are_padding_only(tokenizer):
    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    from tunesmith.modeling.batches import make_batch

    batch = make_batch(examples, packing=False, max_row_tokens=8, pad_token_id=0)
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
