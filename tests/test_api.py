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
