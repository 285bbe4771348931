"""Training on the tiny model: loss falls, saved models reload exactly, accumulation and resume are exact,
schedules are pure, a NaN or a full disk stops the run cleanly, and the CLI reports mistakes in one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tunesmith.config import TrainingConfig, load_config
from tunesmith.errors import TrainingError
from tunesmith.prepare.tokenization import IGNORE_INDEX

QUESTIONS = ["What colour is the Wren kettle?", "How heavy is the Finch toaster?", "Who makes the Heron mixer?",
             "When was the Robin frother released?", "Where is the Swift blender sold?",
             "How much does the Lark scale cost in euros today?", "Can the Owl fan run all night?",
             "Is the Crow lamp dimmable?", "What does the Jay grinder grind?", "Why is the Kite oven so fast?"]
ANSWERS = ["Green.", "It weighs 1.2 kilograms.", "Larkspur makes it.", "In 2021.", "Only in Europe.",
           "It costs 35 euros.", "Yes, it runs quietly all night long.", "Yes.", "Coffee beans and spices.",
           "It has two heating elements and a fan."]


def write_qa(path, n=10):
    with open(path, "w", encoding="utf-8") as f:
        for q, a in list(zip(QUESTIONS, ANSWERS))[:n]:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    return path


@pytest.fixture
def make_run(tmp_path, tiny_model_dir):
    """Prepare a run of the tiny model on 8 train / 2 test examples; returns (config, paths)."""
    from tunesmith.prepare.pipeline import prepare

    data = write_qa(tmp_path / "qa.jsonl")

    def make(*overrides: str, name: str = "run"):
        config = load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}",
                                    f"output.runs_dir={tmp_path / 'runs'}", f"output.name={name}",
                                    "split.test_size=2", "training.precision=fp32", "training.max_steps=4",
                                    "training.warmup_steps=0", "training.lr_scheduler=constant", *overrides])
        return config, prepare(config).paths

    return make


def train_run(config, paths, resume=False):
    from tunesmith.train.loop import train

    return train(paths, config.model, config.training, resume=resume)


def losses(paths) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, paths.metrics.read_text().splitlines()) if "loss" in m}


@pytest.mark.parametrize("method,lr,optimizer", [("full", "1e-3", "adamw"), ("lora", "3e-3", "adamw"),
                                                ("full", "1e-3", "adafactor")])
def test_a_few_steps_lower_the_training_loss(make_run, method, lr, optimizer):
    # batch 8 = the whole train split, so every step's loss is on the same examples
    config, paths = make_run(f"training.method={method}", f"training.learning_rate={lr}", "training.max_steps=5",
                             f"training.optimizer={optimizer}")
    result = train_run(config, paths)
    curve = losses(paths)
    assert sorted(curve) == [1, 2, 3, 4, 5]
    assert curve[5] < curve[1] - 0.05
    assert result.final_test_loss is not None and result.steps == 5
    summary = json.loads(paths.train_summary.read_text())
    assert summary["steps"] == 5 and summary["method"] == method and summary["tokens_per_s"] > 0
    assert paths.loss_plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_training(make_run, method):
    settings = [f"training.method={method}", "training.learning_rate=1e-3", "training.max_steps=3",
                "training.lora_dropout=0"]
    runs = {}
    for name, extra in (("plain", []), ("checkpointed", ["training.gradient_checkpointing=true"])):
        config, paths = make_run(*settings, *extra, name=name)
        train_run(config, paths)
        runs[name] = losses(paths)
    assert runs["checkpointed"] == pytest.approx(runs["plain"], abs=1e-5)


def logits_of(model, tokenizer):
    ids = tokenizer(["Who makes the Heron mixer? Larkspur"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_model_reloads_with_plain_transformers(make_run, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, paths = make_run("training.method=full", "training.learning_rate=1e-3", "training.max_steps=2")
    result = train_run(config, paths)
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    torch.testing.assert_close(logits_of(reloaded, tokenizer), logits_of(result.model, tokenizer))
    assert AutoTokenizer.from_pretrained(result.model_dir).chat_template
    info = json.loads((result.model_dir / "tunesmith.json").read_text())
    assert info["method"] == "full" and info["base_model"] == config.model.name
    assert info["template"]["name"] in {"chat", "alpaca", "qa"}  # resolved, never "auto"


def test_lora_adapter_and_merged_model_reload_with_plain_peft(make_run, tokenizer, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, paths = make_run("training.method=lora", "training.learning_rate=1e-2", "training.max_steps=2",
                             "training.merge_lora=true")
    result = train_run(config, paths)
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = PeftModel.from_pretrained(base, result.model_dir).eval()
    expected = logits_of(result.model, tokenizer)
    torch.testing.assert_close(logits_of(adapter, tokenizer), expected, rtol=1e-5, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    torch.testing.assert_close(logits_of(merged, tokenizer), expected, rtol=1e-5, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not torch.allclose(logits_of(plain, tokenizer), expected)  # training changed something


@pytest.mark.parametrize("packing", ["true", "false"])
def test_labels_reaching_the_model_mask_prompt_and_padding(make_run, tokenizer, monkeypatch, packing):
    from tunesmith.modeling.losses import CausalLMLoss

    seen = []
    forward = CausalLMLoss.forward

    def spy(self, input_ids, labels, position_ids=None, attention_mask=None):
        if self.training:  # not the test-loss evaluation
            seen.append((input_ids.clone(), labels.clone(), position_ids.clone()))
        return forward(self, input_ids, labels, position_ids, attention_mask)

    monkeypatch.setattr(CausalLMLoss, "forward", spy)
    config, paths = make_run(f"training.packing={packing}", "training.max_steps=1", "training.batch_size=3",
                             "training.gradient_accumulation_steps=2")
    train_run(config, paths)
    answered = []
    for input_ids, labels, position_ids in seen:
        for ids, labs, pos in zip(input_ids.tolist(), labels.tolist(), position_ids.tolist()):
            # an example (or a padding token) starts wherever the position restarts at 0
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for start, end in zip(starts, starts[1:]):
                learned = [t for t, lab in zip(ids[start:end], labs[start:end]) if lab != IGNORE_INDEX]
                if learned:
                    text = tokenizer.decode(learned)
                    answer = next((a for a in ANSWERS if text.startswith(a)), None)
                    assert answer is not None and text == answer + tokenizer.eos_token, text
                    answered.append(answer)
    assert len(answered) == len(set(answered)) == 6  # batch 3 x accumulation 2, each answer once, nothing else


def test_accumulating_2x4_gives_the_gradient_of_one_batch_of_8(tiny_model_dir):
    """Examples of different lengths: the mean of micro-batch means would differ; the token-normalized sum does not."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from tunesmith.modeling.batches import make_batch
    from tunesmith.modeling.losses import CausalLMLoss
    from tunesmith.train.loop import accumulate_gradients, step_examples

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


class TestSchedule:
    @pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
    def test_warmup_rises_linearly_to_the_peak(self, schedule):
        from tunesmith.train.loop import lr_at

        assert [lr_at(s, 1.0, 10, 4, schedule) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]

    def test_decays(self):
        from tunesmith.train.loop import lr_at

        assert [lr_at(s, 2.0, 6, 2, "linear") for s in range(2, 6)] == [2.0, 1.5, 1.0, 0.5]
        assert [round(lr_at(s, 2.0, 6, 2, "cosine"), 6) for s in range(2, 6)] == [2.0, 1.707107, 1.0, 0.292893]
        assert {lr_at(s, 2.0, 6, 2, "constant") for s in range(2, 6)} == {2.0}

    def test_is_a_pure_function_of_the_step(self):
        from tunesmith.train.loop import lr_at

        forward = [lr_at(s, 1e-3, 50, 5, "cosine") for s in range(50)]
        assert [lr_at(s, 1e-3, 50, 5, "cosine") for s in reversed(range(50))] == forward[::-1]

    def test_warmup_steps_from_ratio_or_explicit(self):
        from tunesmith.train.loop import warmup_steps

        assert warmup_steps(TrainingConfig(warmup_ratio=0.1), 25) == 3
        assert warmup_steps(TrainingConfig(warmup_ratio=0.1, warmup_steps=7), 25) == 7
        assert warmup_steps(TrainingConfig(warmup_ratio=0.0), 25) == 0


class TestDataOrder:
    def test_each_epoch_sees_every_example_once_in_a_seeded_order(self):
        from tunesmith.train.loop import step_examples

        training = TrainingConfig(batch_size=3, gradient_accumulation_steps=2, seed=5)
        epoch0 = [i for s in range(2) for part in step_examples(s, 10, training) for i in part]
        epoch1 = [i for s in range(2, 4) for part in step_examples(s, 10, training) for i in part]
        assert sorted(epoch0) == sorted(epoch1) == list(range(10))
        assert epoch0 != epoch1
        assert epoch0 == [i for s in range(2) for part in step_examples(s, 10, training) for i in part]

    def test_processes_get_disjoint_shards_of_each_step(self):
        from tunesmith.train.loop import step_examples

        training = TrainingConfig(batch_size=2, gradient_accumulation_steps=2, seed=0)
        for step in range(4):  # 13 examples, 8 per step: the short last step still feeds both processes
            shards = [sum(step_examples(step, 13, training, rank, 2), []) for rank in (0, 1)]
            assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
            assert len(step_examples(step, 13, training, 0, 2)) == len(step_examples(step, 13, training, 1, 2))


CHILD_SCRIPT = textwrap.dedent("""
    import os, pathlib, signal, sys
    from tunesmith.train import loop as train_module
    from tunesmith.config import load_config
    from tunesmith.runs import RunPaths

    kill_after = int(sys.argv[3])  # SIGKILL itself right after this step's checkpoint; 0: never
    save = train_module.save_checkpoint

    def save_then_die(paths, step, *args, **kwargs):
        folder = save(paths, step, *args, **kwargs)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return folder

    train_module.save_checkpoint = save_then_die
    config = load_config(sys.argv[1])
    train_module.train(RunPaths(pathlib.Path(sys.argv[2])), config.model, config.training)
""")

RESUME_SETTINGS = ["training.method=lora", "training.learning_rate=3e-3", "training.lora_dropout=0.3",
                   "training.max_steps=6", "training.batch_size=3", "training.save_every_steps=1",
                   "training.lr_scheduler=cosine", "training.warmup_steps=2"]
"""LoRA with dropout: resuming exactly needs the adapters, AdamW moments, data position and RNG state."""


def start_child(tmp_path, paths, kill_after: int) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(paths.config), str(paths.root), str(kill_after)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_continues_the_loss_curve_exactly(make_run, tmp_path):
    config, paths = make_run(*RESUME_SETTINGS, name="straight")
    train_run(config, paths)
    expected = losses(paths)

    config, paths = make_run(*RESUME_SETTINGS, name="killed")
    child = start_child(tmp_path, paths, kill_after=3)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == -9, stderr[-2000:]
    assert (paths.checkpoints / "latest").read_text() == "step-3"
    assert not paths.model.exists()
    assert max(losses(paths)) == 3

    result = train_run(config, paths, resume=True)
    resumed = losses(paths)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6] and result.steps == 6
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-4)
    assert resumed[1] == expected[1]  # metrics before the checkpoint are kept


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint_and_resume_matches(make_run, tmp_path):
    import random
    import time

    from safetensors.torch import load_file

    from tunesmith.train.loop import latest_checkpoint

    config, paths = make_run(*RESUME_SETTINGS, name="straight")
    expected = train_run(config, paths).final_train_loss
    rng = random.Random(0)
    for trial in range(10):
        config, paths = make_run(*RESUME_SETTINGS, name=f"trial-{trial}")
        child = start_child(tmp_path, paths, kill_after=0)
        while child.poll() is None and not paths.metrics.is_file():
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))
        child.kill()
        child.wait(timeout=60)
        checkpoint = latest_checkpoint(paths)
        if checkpoint is not None:
            assert load_file(str(checkpoint / "trainable.safetensors"))
            assert torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
        result = train_run(config, paths, resume=checkpoint is not None)
        assert result.final_train_loss == pytest.approx(expected, abs=1e-4), f"trial {trial}, from {checkpoint}"


def test_resume_without_a_checkpoint_is_a_clear_error(make_run):
    config, paths = make_run()
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_run(config, paths, resume=True)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(make_run, monkeypatch):
    from tunesmith.modeling.losses import CausalLMLoss

    forward, calls = CausalLMLoss.forward, []

    def poisoned(self, *args, **kwargs):
        loss = forward(self, *args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(CausalLMLoss, "forward", poisoned)
    config, paths = make_run("training.save_every_steps=2", "training.max_steps=5")
    with pytest.raises(TrainingError, match="loss became nan at step 3.*step-2"):
        train_run(config, paths)
    assert (paths.checkpoints / "latest").read_text() == "step-2"
    assert not paths.model.exists()
    train_run(config, paths, resume=True)  # the kept checkpoint is usable
    assert paths.model.is_dir()


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(make_run, monkeypatch):
    import safetensors.torch
    from safetensors.torch import load_file

    real_save, calls = safetensors.torch.save_file, []

    def save_until_full(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            real_save(tensors, filename, *args, **kwargs)  # half a file is on disk when the space runs out
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_full)
    config, paths = make_run("training.save_every_steps=1")
    with pytest.raises(TrainingError, match=r"No space left on device.*step-1 is intact"):
        train_run(config, paths)
    assert (paths.checkpoints / "latest").read_text() == "step-1"
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["latest", "step-1"]  # no half-written folder
    assert load_file(str(paths.checkpoints / "step-1" / "trainable.safetensors"))
    assert json.loads((paths.checkpoints / "step-1" / "trainer_state.json").read_text())["step"] == 1


def test_qlora_without_a_gpu_is_a_clear_error(make_run):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config, paths = make_run("training.method=qlora")
    with pytest.raises(TrainingError, match="qlora needs a CUDA GPU"):
        train_run(config, paths)


def test_best_checkpoint_by_test_loss_becomes_the_model_and_early_stopping_ends_the_run(make_run):
    # a learning rate this high makes the test loss rise after the first steps
    config, paths = make_run("training.method=full", "training.learning_rate=0.05", "training.max_steps=20",
                             "training.eval_every_steps=1", "training.early_stopping_patience=2")
    result = train_run(config, paths)
    summary = result.summary
    tests = {m["step"]: m["test_loss"] for m in map(json.loads, paths.metrics.read_text().splitlines())
             if "test_loss" in m}
    assert summary["stopped_early"] and result.steps < 20
    assert summary["best_test_loss"] == min(tests.values())
    assert summary["model_step"] == summary["best_step"] == min(tests, key=tests.get)


class TestCli:
    @pytest.fixture
    def config_file(self, tmp_path, tiny_model_dir):
        write_qa(tmp_path / "qa.jsonl")
        path = tmp_path / "train.yaml"
        path.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{path: qa.jsonl}}\nsplit: {{test_size: 2}}\n"
                        f"output: {{runs_dir: {tmp_path / 'runs'}, name: cli}}\n"
                        f"training: {{max_steps: 2, precision: fp32, save_every_steps: 1}}\n")
        return path

    def test_trains_and_prints_where_the_model_is_and_the_test_loss(self, config_file, tmp_path, capsys):
        from tunesmith.cli import main

        assert main(["train", str(config_file)]) == 0
        out = capsys.readouterr().out
        assert f"model:      {tmp_path / 'runs' / 'cli' / 'model'}" in out and "test loss:" in out
        assert main(["train", str(config_file), "--resume", "--set", "training.max_steps=3"]) == 0
        assert json.loads((tmp_path / "runs" / "cli" / "train_summary.json").read_text())["steps"] == 3

    @pytest.mark.parametrize("overrides,expected", [
        (["--set", "training.lr_scheduler=sometimes"], "training.lr_scheduler='sometimes'"),
        (["--set", "training.learning_rat=1e-4"], "unknown key 'training.learning_rat'"),
        (["--set", "data.path=missing.jsonl"], "data.path='missing.jsonl': no such file"),
        (["--set", "model.name=no-such-model"], "model 'no-such-model': not an alias"),
        (["--nproc", "0"], "--nproc 0"),
    ])
    def test_mistakes_are_one_clear_line_and_a_failing_exit(self, config_file, capsys, overrides, expected):
        from tunesmith.cli import main

        assert main(["train", str(config_file), *overrides]) == 1
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_under_bf16_a_small_lora_update_still_changes_the_output(tiny_model_dir):
    """bf16 base output + a LoRA delta below half its last bit rounds back to the base output; summing in fp32
    (keep_lora_sums_fp32) keeps early, small adapters visible, as in fp32 training."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models import apply_lora
    from tunesmith.train.loop import keep_lora_sums_fp32

    def delta(hook: bool) -> float:
        torch.manual_seed(0)
        model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), TrainingConfig(lora_dropout=0.0))
        if hook:
            keep_lora_sums_fp32(model)
        layer = model.get_base_model().model.layers[0].mlp.down_proj
        x = torch.randn(4, 128)
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16)  # one region per forward: autocast caches weight casts
        with torch.no_grad():
            with bf16:
                before = layer(x).float()
            layer.lora_B["default"].weight.fill_(1e-6)
            with bf16:
                after = layer(x).float()
        return (after - before).abs().max().item()

    assert delta(hook=False) == 0.0  # the update is invisible in plain bf16 autocast
    assert delta(hook=True) > 0.0
