"""The loss trains on the logits the model serves: Granite's and Cohere's logit scaling inside the fused path,
an MoE's router auxiliary loss and unknown architectures through the model's own forward.

Each tiny model is built offline from its transformers config class with a small vocabulary; the reference is
the cross-entropy of the model's own `forward(...).logits` at answer tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.modeling import losses
from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.losses import CausalLMLoss, HeadTransform, head_transform
from tunesmith.prepare.tokenization import IGNORE_INDEX

VOCAB = 96
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def granite():
    from transformers import GraniteConfig, GraniteForCausalLM

    return GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=4.0))


def cohere():
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(CohereConfig(**SMALL, logit_scale=0.25))


def mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2,
                                            output_router_logits=True, router_aux_loss_coef=0.5))


def qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(Qwen2MoeConfig(**SMALL, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                              num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                                              output_router_logits=True, router_aux_loss_coef=0.5))


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256))


def build(factory):
    torch.manual_seed(0)
    model = factory().float()
    with torch.no_grad():  # larger weights than the 0.02 init, so logits and routing differ visibly
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    return model.eval()


def examples(n: int = 5):
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        length = 6 + 3 * i
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2:]})
    return out


BATCHES = {"padded": lambda: make_batch(examples(), False, 0, 0),
           "packed": lambda: make_batch(examples(), True, 32, 0)}


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def reference_sum(model, batch: dict) -> torch.Tensor:
    """Cross-entropy of the model's own logits at every answer token, summed."""
    logits = model(**model_inputs(batch), use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def answer_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def grads_of(model, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class TestHeadTransform:
    def test_granite_divides_and_cohere_multiplies(self):
        assert head_transform(granite().config) == HeadTransform(scale=0.25)
        assert head_transform(cohere().config) == HeadTransform(scale=0.25)

    def test_gemma2_softcaps(self):
        from transformers import Gemma2Config

        assert head_transform(Gemma2Config(final_logit_softcapping=30.0)) == HeadTransform(softcap=30.0)

    def test_moe_with_router_loss_and_unknown_architectures_use_their_own_forward(self):
        from transformers import GPT2Config, MixtralConfig

        assert head_transform(MixtralConfig(output_router_logits=True)) is None
        assert head_transform(MixtralConfig(output_router_logits=False)) == HeadTransform()
        assert head_transform(MixtralConfig(output_router_logits=True, router_aux_loss_coef=0.0)) == HeadTransform()
        assert head_transform(GPT2Config()) is None


@pytest.mark.parametrize("factory", [granite, cohere], ids=["granite", "cohere"])
@pytest.mark.parametrize("kind", list(BATCHES))
def test_scaled_logits_give_the_models_own_loss_and_gradients(factory, kind):
    """Fused path (gradients computed in its forward) with the model's logit scaling: loss and every gradient."""
    model, batch = build(factory), BATCHES[kind]()
    fused_loss, fused = grads_of(model, lambda: CausalLMLoss(model)(**batch))
    reference_loss, reference = grads_of(model, lambda: reference_sum(model, batch))
    torch.testing.assert_close(fused_loss, reference_loss, rtol=1e-5, atol=1e-5)
    assert fused.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation: the plain path without gradients
        torch.testing.assert_close(CausalLMLoss(model)(**batch), reference_loss, rtol=1e-5, atol=1e-5)


def test_the_scaling_matters():
    """Without the scaling (what training computed before) the loss would be another number."""
    model, batch = build(granite), BATCHES["padded"]()
    hidden = model.model(**model_inputs(batch), use_cache=False).last_hidden_state
    unscaled = losses.token_loss_sum(hidden, batch["labels"], model.lm_head)
    assert abs(unscaled.item() - reference_sum(model, batch).item()) > 1.0


@pytest.mark.parametrize("factory", [mixtral, qwen2_moe], ids=["mixtral", "qwen2-moe"])
@pytest.mark.parametrize("kind", list(BATCHES))
def test_moe_loss_includes_the_router_auxiliary_loss_of_the_models_own_loss(factory, kind):
    model, batch = build(factory), BATCHES[kind]()
    n = answer_tokens(batch)
    with torch.no_grad():
        summed = CausalLMLoss(model)(**batch)
        own = model(**model_inputs(batch), labels=batch["labels"], use_cache=False)
        cross_entropy = reference_sum(model, batch)
    # the model's loss is the token MEAN plus coef x aux: as a sum, coef x aux counts once per answer token
    torch.testing.assert_close(summed / n, own.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(summed, cross_entropy + 0.5 * own.aux_loss * n, rtol=1e-5, atol=1e-5)
    assert own.aux_loss.item() > 0.1 and (summed - cross_entropy).item() > 0.1 * n


def test_moe_gradients_reach_the_router():
    model, batch = build(mixtral), BATCHES["packed"]()
    _, grads = grads_of(model, lambda: CausalLMLoss(model)(**batch))
    _, without_aux = grads_of(model, lambda: reference_sum(model, batch))
    gate = next(name for name in grads if "gate" in name and "layers.0" in name)
    assert not torch.allclose(grads[gate], without_aux[gate])


@pytest.mark.parametrize("kind", list(BATCHES))
def test_an_unknown_architecture_runs_its_own_forward(kind, monkeypatch):
    model, batch = build(gpt2), BATCHES[kind]()
    monkeypatch.setattr(losses, "token_loss_sum", lambda *a, **k: pytest.fail("fused path for an unknown model"))
    summed, grads = grads_of(model, lambda: CausalLMLoss(model)(**batch))
    reference, reference_grads = grads_of(model, lambda: reference_sum(model, batch))
    torch.testing.assert_close(summed, reference, rtol=1e-5, atol=1e-5)
    for name in reference_grads:
        torch.testing.assert_close(grads[name], reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_own_forward_keeps_only_answer_positions_of_the_logits():
    """The model's forward is asked only for positions where some row has an answer token."""
    model, batch = build(gpt2), BATCHES["padded"]()
    kept = []
    model.register_forward_pre_hook(lambda _module, _args, kwargs: kept.append(kwargs.get("logits_to_keep")),
                                    with_kwargs=True)
    with torch.no_grad():
        CausalLMLoss(model)(**batch)
    expected = (batch["labels"][:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    assert len(kept) == 1 and torch.equal(kept[0], expected) and len(expected) < batch["input_ids"].shape[1] - 1


@pytest.mark.parametrize("softcap", [None, 3.0], ids=["plain", "softcapped"])
@pytest.mark.parametrize("bias", [False, True], ids=["fused-path", "plain-path"])
def test_token_loss_sum_scales_before_softcapping(softcap, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(2, 12, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 12))
    labels[0, :4] = IGNORE_INDEX

    def reference():
        logits = 0.3 * head(hidden[:, :-1]).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        return F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")

    got, expected = losses.token_loss_sum(hidden, labels, head, softcap, scale=0.3), reference()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got_grads = torch.autograd.grad(got, (hidden, head.weight))
    expected_grads = torch.autograd.grad(expected, (hidden, head.weight))
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(losses.token_loss_sum(hidden, labels, head, softcap, scale=0.3), expected,
                                   rtol=1e-5, atol=1e-5)
