"""The output layer and cross-entropy at loss-bearing positions: the same numbers as the plain computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.modeling import losses
from tunesmith.prepare.tokenization import IGNORE_INDEX


def reference_loss(hidden, labels, head, softcap=None):
    """Full logits at every position, cross-entropy over the shifted labels, summed."""
    logits = head(hidden[:, :-1]).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum",
                           ignore_index=IGNORE_INDEX)


def loss_and_grads(loss_fn, hidden, head):
    head.zero_grad()
    hidden.grad = None
    loss = loss_fn()
    loss.backward()
    weight_grad = head.weight.grad.clone() if head.weight.requires_grad else None
    return loss.detach(), hidden.grad.clone(), weight_grad


@pytest.fixture
def batch():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 20, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 20))
    labels[0, :7] = IGNORE_INDEX
    return hidden, labels, head


@pytest.mark.parametrize("softcap", [None, 2.0], ids=["plain", "softcapped"])
@pytest.mark.parametrize("frozen_head", [False, True], ids=["trained-head", "frozen-head"])
def test_fused_loss_and_gradients_equal_the_plain_computation(batch, softcap, frozen_head):
    hidden, labels, head = batch
    head.weight.requires_grad_(not frozen_head)
    fused = loss_and_grads(lambda: losses.token_loss_sum(hidden, labels, head, softcap), hidden, head)
    plain = loss_and_grads(lambda: reference_loss(hidden, labels, head, softcap), hidden, head)
    for a, b in zip(fused, plain):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_output_layer_in_chunks_gives_the_same_loss_and_gradients(batch, monkeypatch):
    """Many answer tokens go through the output layer in chunks (weight gradient summed in fp32); nothing changes."""
    hidden, labels, head = batch
    whole = loss_and_grads(lambda: losses.token_loss_sum(hidden, labels, head), hidden, head)
    monkeypatch.setattr(losses, "HEAD_CHUNK_ROWS", 7)
    monkeypatch.setattr(losses, "SOFTMAX_ROWS", 3)
    chunked = loss_and_grads(lambda: losses.token_loss_sum(hidden, labels, head), hidden, head)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_loss_under_bf16_autocast_matches_autocast_of_the_plain_computation(batch):
    hidden, labels, head = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(lambda: losses.token_loss_sum(hidden, labels, head), hidden, head)
        plain = loss_and_grads(lambda: reference_loss(hidden, labels, head), hidden, head)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == hidden.dtype
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_no_loss_bearing_position_gives_zero_loss_and_zero_gradients(batch):
    hidden, labels, head = batch
    loss, hidden_grad, weight_grad = loss_and_grads(
        lambda: losses.token_loss_sum(hidden, torch.full_like(labels, IGNORE_INDEX), head), hidden, head)
    assert loss.item() == 0.0 and not hidden_grad.any() and not weight_grad.any()


def test_a_head_with_bias_takes_the_plain_path_with_the_same_result(batch):
    hidden, labels, _ = batch
    head = torch.nn.Linear(16, 50, bias=True)
    with torch.no_grad():
        torch.testing.assert_close(losses.token_loss_sum(hidden, labels, head), reference_loss(hidden, labels, head))


def test_without_gradients_only_the_logits_are_multiplied(batch, monkeypatch):
    """Evaluation: the loss alone; the two gradient products of a training step are skipped."""
    hidden, labels, head = batch
    products = []
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append(1) or matmul(a, b))
    with torch.inference_mode():
        loss = losses.token_loss_sum(hidden, labels, head)
    assert loss.item() == pytest.approx(reference_loss(hidden, labels, head).item(), rel=1e-5)
    assert len(products) == 1


def test_fp16_keeps_the_plain_path_whose_gradients_see_the_loss_scale(batch, monkeypatch):
    hidden, labels, head = batch
    monkeypatch.setattr(losses.LinearCrossEntropy, "apply", lambda *args: pytest.fail("fused path taken in fp16"))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = losses.token_loss_sum(hidden, labels, head)
    assert loss.item() == pytest.approx(reference_loss(hidden, labels, head).item(), rel=1e-2)
