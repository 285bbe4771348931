"""The Python facade and the whole-pipeline command on the tiny model: short, and every stage really ran."""

from __future__ import annotations

import json

import pytest

from tunesmith import Tuner, api
from tunesmith.cli import main
from tunesmith.config import GenerateConfig
from tunesmith.errors import ConfigError, RunError


def write_pairs(path, n=24):
    rows = [{"q": f"What is the code of box {i}?", "a": f"Box {i} has code {i * 7}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tuner(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl")
    return Tuner(str(tiny_model_dir), **{"output.runs_dir": str(tmp_path / "runs"), "split.test_size": 4,
                                        "training.precision": "fp32", "eval.max_new_tokens": 4,
                                        "eval.bootstrap_samples": 10}).load_data(data, input_key="q", output_key="a")


def test_three_line_api_trains_evaluates_and_generates(tuner):
    tuner.train(max_steps=3, learning_rate=1e-3, method="lora", max_length=64)
    assert tuner.config.training.method == "lora" and tuner.config.tokenization.max_length == 64
    assert tuner.config.data.prompt_key == "q" and tuner.config.data.response_key == "a"
    assert (tuner.model_dir / "adapter_config.json").is_file()
    metrics = tuner.evaluate()
    assert set(metrics["models"]) == {"base", "finetuned"}
    assert metrics["models"]["finetuned"]["n"] == 4
    assert metrics["models"]["finetuned"]["loss"] < metrics["models"]["base"]["loss"]
    # the facade answers exactly as `tunesmith generate` does: same template, greedy, the run's precision
    answer = tuner.generate("What is the code of box 3?", max_new_tokens=4)
    [row] = api.generate_answers(str(tuner.run), prompts=["What is the code of box 3?"],
                                 settings=GenerateConfig(max_new_tokens=4, precision="fp32"), progress=False)
    assert answer and answer == row["output"]
    assert 1 <= row["completion_tokens"] <= 4


def test_unknown_training_setting_is_named(tuner):
    with pytest.raises(ConfigError, match="'max_stepz'"):
        tuner.train(max_stepz=3)


def test_evaluate_before_training_is_a_clear_error(tuner):
    with pytest.raises(RunError, match="train"):
        tuner.evaluate()


def test_run_command_goes_from_config_to_report(tmp_path, tiny_model_dir, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl")
    config = tmp_path / "c.yaml"
    config.write_text(f"""model: {{name: {tiny_model_dir}}}
data: {{path: {data.name}, prompt_key: q, response_key: a}}
split: {{test_size: 4}}
training: {{method: full, max_steps: 3, learning_rate: 1.0e-3, precision: fp32}}
eval: {{max_new_tokens: 4, bootstrap_samples: 10}}
output: {{runs_dir: {tmp_path / 'runs'}, name: r}}
""")
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "r"
    assert "report:" in out and str(run / "report.html") in out
    assert "test loss:" in out and "base" in out and "finetuned" in out
    assert out.index("key_fact_recall:") < out.index("test loss:") < out.index("rouge_l:")  # content first
    for produced in ("config.yaml", "metrics.jsonl", "loss.png", "model/config.json", "eval/metrics.json",
                     "data_stats.json"):
        assert (run / produced).is_file(), produced
    # The nav always says "Metrics": check the section holds this run's numbers, as eval/metrics.json has them.
    metrics = (run / "report.html").read_text().split('<section id="metrics">', 1)[1].split("</section>", 1)[0]
    models = json.loads((run / "eval" / "metrics.json").read_text())["models"]
    assert "not computed" not in metrics
    for label in ("base", "finetuned"):
        assert f"<td>{models[label]['loss']:,.4f}</td>" in metrics
        assert f"{models[label]['metrics']['rouge_l']['mean']:,.2f} <span" in metrics


def test_train_keeps_the_prepare_notes_and_warns_once(tmp_path, tiny_model_dir):
    """A notebook has no CLI to print what preparing said: the notes stay on the tuner and come as one warning.
    The data had the qa template baked in, so the saved model records it and `generate` strips it again."""
    import warnings

    rows = [{"q": f"### Question:\nWhat is the code of box {i}?\n\n### Answer:", "a": f"Box {i} has code {i * 7}."}
            for i in range(24)] + [{"q": "What is in box 99?", "a": ""}]
    data = tmp_path / "marked.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tuner = Tuner(str(tiny_model_dir), **{"output.runs_dir": str(tmp_path / "runs"), "split.test_size": 4,
                                         "training.precision": "fp32"})
    tuner.load_data(data, input_key="q", output_key="a", on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.train(max_steps=1, method="full", max_length=64)
    ours = [w for w in caught if w.filename.endswith("tuner.py")]
    assert len(ours) == 1 and str(ours[0].message) == "\n".join(tuner.notes)
    assert len(tuner.notes) == 2
    assert tuner.notes[0].startswith("warning: skipped 1 invalid record of 25")
    assert "### Question: / ### Answer:" in tuner.notes[1] and "24 of " in tuner.notes[1]
    assert json.loads((tuner.model_dir / "tunesmith.json").read_text())["stripped_template"] == "qa"
    plain = "What is the code of box 3?"
    assert tuner.generate(f"### Question:\n{plain}\n\n### Answer:", max_new_tokens=3) == tuner.generate(
        plain, max_new_tokens=3)
