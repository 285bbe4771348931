"""`tunesmith plan`: the memory arithmetic (train/plan.py) and the command, on 7B configs built without weights."""

from __future__ import annotations

import re

import pytest

from tunesmith.errors import ConfigError
from tunesmith.train.plan import (
    GiB,
    ModelShape,
    Setup,
    Workload,
    estimate,
    lora_params,
    micro_batch_tokens,
    parse_memory,
    plan_memory,
)

LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
QWEN2_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)


@pytest.fixture(scope="module")
def llama_7b():
    from transformers import LlamaConfig

    return ModelShape.from_config(LlamaConfig(**LLAMA_7B))


def gpu_work(**changes) -> Workload:
    return Workload(**{"batch_size": 8, "max_length": 1024, "answer_tokens": 512, "precision": "bf16",
                       "device": "cuda", **changes})


class TestModelShape:
    def test_parameter_counts_match_transformers_models(self, tiny_model_dir):
        import torch
        from transformers import AutoConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

        small_qwen = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)
        for config, cls in ((AutoConfig.from_pretrained(tiny_model_dir), LlamaForCausalLM),
                            (small_qwen, Qwen2ForCausalLM)):
            with torch.device("meta"):
                model = cls(config)
            real = sum(p.numel() for p in model.parameters())  # tied weights counted once
            assert ModelShape.from_config(config).total_params == real

    def test_llama_7b_has_its_6_7b_parameters(self, llama_7b):
        assert llama_7b.total_params == pytest.approx(6.74e9, rel=0.005)

    def test_a_config_without_decoder_sizes_is_a_clear_error(self):
        class Odd:
            model_type = "odd"
            hidden_size = 8

        with pytest.raises(ConfigError, match="no intermediate_size, num_hidden_layers"):
            ModelShape.from_config(Odd())

    def test_lora_counts_rank_times_inputs_plus_outputs_of_the_targets(self, llama_7b):
        per_layer_qv = 16 * (4096 + 4096) * 2
        assert lora_params(llama_7b, 16, ["q_proj", "v_proj"]) == 32 * per_layer_qv
        assert lora_params(llama_7b, 16, "all-linear") == 32 * 16 * (4 * 8192 + 3 * (4096 + 11008))


class TestEstimate:
    def test_full_finetuning_holds_masters_gradients_and_two_moments(self, llama_7b):
        e = estimate(llama_7b, gpu_work(), Setup("full", "ddp", False, 1))
        p = llama_7b.total_params
        assert e.gradients == 4 * p and e.optimizer == 8 * p
        assert e.weights == pytest.approx(4 * p + 2 * (p - llama_7b.embedding_params), rel=0.01)  # + autocast

    def test_fsdp_divides_the_sharded_state_by_the_processes(self, llama_7b):
        one, eight = (estimate(llama_7b, gpu_work(), Setup("full", "fsdp", False, n)) for n in (1, 8))
        assert eight.optimizer == one.optimizer // 8
        assert eight.weights + eight.optimizer < (one.weights + one.optimizer) / 3
        assert eight.activations == one.activations  # batch_size is per process

    def test_ddp_buckets_double_the_gradients_of_several_processes(self, llama_7b):
        one, two = (estimate(llama_7b, gpu_work(), Setup("lora", "ddp", False, n)) for n in (1, 2))
        assert two.gradients == 2 * one.gradients

    def test_checkpointing_cuts_activations(self, llama_7b):
        plain, ckpt = (estimate(llama_7b, gpu_work(), Setup("full", "fsdp", c, 8)) for c in (False, True))
        assert ckpt.activations < plain.activations / 5

    def test_activations_grow_with_the_micro_batch(self, llama_7b):
        small, large = (estimate(llama_7b, gpu_work(batch_size=b), Setup("lora", "ddp", False, 1)).activations
                        for b in (2, 8))
        assert 3.5 < large / small < 4.05

    def test_qlora_base_is_about_half_a_byte_a_weight(self, llama_7b):
        qlora = estimate(llama_7b, gpu_work(), Setup("qlora", "ddp", False, 1))
        lora = estimate(llama_7b, gpu_work(), Setup("lora", "ddp", False, 1))
        assert qlora.weights < lora.weights / 2.5
        assert 3.5 * GiB < qlora.weights < 5 * GiB

    def test_accumulation_keeps_gradients_beside_activations(self, llama_7b):
        once, twice = (estimate(llama_7b, gpu_work(accumulation_steps=a), Setup("full", "fsdp", False, 8))
                       for a in (1, 2))
        assert twice.total - once.total == pytest.approx(min(once.gradients, once.activations), rel=1e-6)


def test_micro_batch_tokens_of_varied_lengths_lie_between_mean_and_bound():
    lengths = list(range(10, 200))
    tokens = micro_batch_tokens(lengths, 8, 256)
    assert 8 * 105 < tokens < 8 * 199


def test_seven_b_full_fits_eight_80gb_gpus_only_sharded_and_qlora_fits_one_24gb(llama_7b):
    work = gpu_work(max_length=2048, micro_batch_tokens=None, batch_size=4)
    eight = plan_memory(llama_7b, work, 80 * GiB, 8)
    full = eight.smallest["full"]
    assert full is not None and full.setup.strategy == "fsdp" and full.total <= 80 * GiB
    assert not any(eight.fits(e) for e in eight.estimates if e.setup.method == "full" and e.setup.strategy == "ddp")
    one = plan_memory(llama_7b, work, 24 * GiB, 1)
    assert one.smallest["qlora"] is not None and one.smallest["full"] is None


@pytest.mark.parametrize("text, expected", [("80GB", 80 * GiB), ("24 GiB", 24 * GiB), ("512MB", 512 * 2 ** 20),
                                            ("80", 80 * GiB), ("1.5g", int(1.5 * GiB))])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "eighty", "-4GB", "0", "80XB"])
def test_parse_memory_names_the_flag(text):
    with pytest.raises(ConfigError, match="--gpu-memory"):
        parse_memory(text)


@pytest.mark.parametrize("dims", [LLAMA_7B, QWEN2_7B], ids=["llama", "qwen2"])
def test_plan_command_prints_per_gpu_figures_and_setups_that_fit(tmp_path, capsys, dims):
    """The command reads only config.json (the folder has no weights): full finetuning of a 7B model fits 8 x 80
    GB under FSDP, and QLoRA fits one 24 GB GPU."""
    from transformers import LlamaConfig, Qwen2Config

    from tunesmith.cli import main

    folder = tmp_path / "model-7b"
    (LlamaConfig if dims is LLAMA_7B else Qwen2Config)(**dims).save_pretrained(folder)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: {folder}}}\ndata: {{path: {tmp_path / 'none.jsonl'}}}\n"
                      f"tokenization: {{max_length: 2048}}\ntraining: {{method: full, batch_size: 4}}\n")
    assert main(["plan", str(config), "--gpus", "8", "--gpu-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"full\s+fsdp\s+(ckpt)?\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+yes", out)
    assert re.search(r"full\s+ddp\s+[\d. ]+no", out)
    full_line = next(line for line in out.splitlines() if line.strip().startswith("full ") and "GiB each" in line)
    assert "FSDP" in full_line and float(re.search(r"([\d.]+) GiB each", full_line).group(1)) <= 80

    assert main(["plan", str(config), "--gpus", "1", "--gpu-memory", "24GB"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"qlora\s+1 GPU.*: [\d.]+ GiB each", out)
    assert re.search(r"full\s+none on up to 1 GPU of 24.0 GiB", out)


def test_plan_command_rejects_bad_sizes_and_counts(tmp_path, capsys):
    from tunesmith.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("training: {max_steps: 1}\n")
    assert main(["plan", str(config), "--gpu-memory", "lots"]) == 1
    assert "--gpu-memory 'lots'" in capsys.readouterr().err
    assert main(["plan", str(config), "--gpus", "0"]) == 1
    assert "--gpus 0" in capsys.readouterr().err
