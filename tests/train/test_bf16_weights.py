"""bf16 working weights give the numbers plain bf16 autocast gives, and the saved model keeps its fp32 base."""

from __future__ import annotations

import copy

import pytest
import torch

from tunesmith.train.bf16_weights import bf16_trainable_copies, frozen_to_bf16, matrix_weights, restore_frozen
from tunesmith.config import ModelConfig
from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.losses import CausalLMLoss

from training_runs import losses, train_run


@pytest.fixture
def loss_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for p in model.parameters():  # larger weights, so bf16 rounding shows up in every product
        p.data.normal_(0, 0.2)
    return CausalLMLoss(model).train()


def batches():
    torch.manual_seed(1)
    examples = [{"input_ids": ids, "labels": [-100] * 3 + ids[3:]}
                for ids in (torch.randint(3, 1000, (n,)).tolist() for n in (9, 14, 6, 11))]
    return [make_batch(examples[:2], True, 32, 2), make_batch(examples[2:], True, 32, 2)]


def grads_after(forward, model, micro_batches) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    for batch in micro_batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = forward(**batch)
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_matrix_weights_are_the_linear_layers_but_not_lora_adapters(loss_model):
    from peft import LoraConfig, get_peft_model

    names = matrix_weights(loss_model)
    assert {"model.model.layers.0.self_attn.q_proj.weight", "model.lm_head.weight"} <= set(names)
    assert not any("embed" in n for n in names)
    lora = get_peft_model(copy.deepcopy(loss_model.model), LoraConfig(r=4, target_modules="all-linear"))
    assert names and all("base_layer" in n or n.endswith("lm_head.weight") for n in matrix_weights(lora))


def test_copies_give_the_masters_the_gradients_of_autocast_over_fp32_weights(loss_model):
    """Two micro-batches: the bf16 gradients are added into the fp32 masters, as autocast's cast-back does."""
    micro_batches = batches()
    expected = grads_after(loss_model, loss_model, micro_batches)
    copies = bf16_trainable_copies(loss_model)
    got = grads_after(copies, loss_model, micro_batches)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert all(c.grad is None for c in copies.copies.values())  # freed once added to the master
    embedding = loss_model.model.get_input_embeddings()
    assert embedding.sparse and embedding.weight.grad.layout == torch.strided  # sparse rows added into dense
    copies.close()
    assert not embedding.sparse


def test_refresh_rounds_the_updated_masters_into_the_copies(loss_model):
    copies = bf16_trainable_copies(loss_model)
    name, master = next(iter(copies.masters.items()))
    with torch.no_grad():
        master.add_(0.125)
    assert not torch.equal(copies.copies[name], master.to(torch.bfloat16))
    copies.refresh()
    assert torch.equal(copies.copies[name], master.to(torch.bfloat16))


def test_frozen_base_in_bf16_keeps_outputs_and_is_restored_exactly_from_the_model_file(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    batch = batches()[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = CausalLMLoss(model)(**batch)
    assert frozen_to_bf16(model) == 2 * 7 + 1  # 2 layers x (q, k, v, o, gate, up, down) + the output layer
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    # The tied output layer got a bf16 weight of its own; the lookup keeps fp32 rows (fp32 residual stream).
    assert base.lm_head.weight.dtype == torch.bfloat16 and base.model.embed_tokens.weight.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert CausalLMLoss(model)(**batch) == before

    restore_frozen(model, ModelConfig(name=str(tiny_model_dir)))
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    q_proj = model.get_base_model().model.layers[1].self_attn.q_proj
    assert torch.equal(q_proj.base_layer.weight, original.model.layers[1].self_attn.q_proj.weight)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert base.lm_head.weight is base.model.embed_tokens.weight  # tied again, as saved models expect
    assert torch.equal(base.lm_head.weight, original.lm_head.weight)


# the LoRA variant (~12 s) is slow: the full one exercises the same copies, and LoRA's frozen base is tested above
@pytest.mark.parametrize("method", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_bf16_training_with_working_weights_matches_plain_autocast_step_for_step(make_run, monkeypatch, method):
    import tunesmith.train.model as train_module  # where the trainer makes its bf16 weights

    overrides = ("training.precision=bf16", f"training.method={method}", "training.learning_rate=1e-3")
    made = {}
    monkeypatch.setattr(train_module, "bf16_trainable_copies",
                        lambda model: made.setdefault("copies", bf16_trainable_copies(model)))
    monkeypatch.setattr(train_module, "frozen_to_bf16", lambda model: made.setdefault("frozen", frozen_to_bf16(model)))
    config, paths = make_run(*overrides, name="copies")
    with_copies = train_run(config, paths)
    assert (made["copies"] is not None) == (method == "full") and (made.get("frozen", 0) > 0) == (method == "lora")
    monkeypatch.setattr(train_module, "bf16_trainable_copies", lambda _model: None)
    monkeypatch.setattr(train_module, "frozen_to_bf16", lambda _model: 0)
    config, plain_paths = make_run(*overrides, name="plain")
    plain = train_run(config, plain_paths)

    # Same numbers up to the order of fp32 additions (the tied output layer's and embedding's gradients).
    assert losses(paths) == pytest.approx(losses(plain_paths), rel=1e-4)
    assert with_copies.final_test_loss == pytest.approx(plain.final_test_loss, rel=1e-4)
    assert {p.dtype for p in with_copies.model.parameters()} == {torch.float32}


def test_restored_weights_stay_on_each_parameters_device_in_fp32(tiny_model_dir):
    """The model file loads onto the CPU; a weight living elsewhere (a GPU in training, the meta device here)
    must come back there, not be swapped for the CPU copy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear"))
    frozen_to_bf16(model)
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    q_proj.weight = torch.nn.Parameter(q_proj.weight.detach().to("meta"), requires_grad=False)
    elsewhere = q_proj.weight

    restore_frozen(model, ModelConfig(name=str(tiny_model_dir)))
    assert elsewhere.device.type == "meta" and elsewhere.dtype == torch.float32
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for name, module in original.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "model.layers.0.self_attn.q_proj":
            target = model.get_base_model().get_submodule(name)
            weight = getattr(target, "base_layer", target).weight
            assert weight.device.type == "cpu" and weight.dtype == torch.float32, name
            assert torch.equal(weight, module.weight), name
