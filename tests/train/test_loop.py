"""The training loop on the tiny model: loss falls, the model sees exactly the answers' labels, a NaN stops the
run cleanly, the best test loss's weights are kept and early stopping ends the run, `on_metrics` is called when
it should be, and the CLI reports mistakes in one line."""

from __future__ import annotations

import json

import pytest

from tunesmith.errors import TrainingError
from tunesmith.prepare.tokenization import IGNORE_INDEX
from training_runs import ANSWERS, losses, train_run, write_qa


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


def test_on_metrics_gets_the_metrics_after_each_test_loss_and_at_the_end(make_run):
    """The trainer draws nothing itself; the callback (the API's loss plot) sees each evaluation as it lands."""
    from tunesmith.train.loop import train

    config, paths = make_run("training.max_steps=4", "training.eval_every_steps=2")
    calls = []
    train(paths, config.model, config.training, config.template,
          on_metrics=lambda run_paths, metrics: calls.append((run_paths, [dict(m) for m in metrics])))
    assert [run_paths for run_paths, _ in calls] == [paths, paths]
    mid, end = (metrics for _, metrics in calls)
    assert mid[-1]["step"] == 2 and "test_loss" in mid[-1] and [m["step"] for m in mid] == [1, 2]
    assert end == [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    assert end[-1]["step"] == 4 and "test_loss" in end[-1]
    assert not paths.loss_plot.exists()


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
        assert (tmp_path / "runs" / "cli" / "loss.png").read_bytes().startswith(b"\x89PNG")  # the API's callback
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
