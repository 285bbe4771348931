"""`data inspect` as a stage: the same lengths and max_length as `prepare`, the histogram written by the api."""

from __future__ import annotations

import json

from tunesmith.config import DataConfig, ModelConfig, SplitConfig, TemplateConfig, TokenizationConfig
from tunesmith.prepare.inspect import inspect_data
from tunesmith.prepare.pipeline import prepare
from tunesmith.runs import RunPaths


def write_qa(path, n: int = 12) -> str:
    rows = [{"question": f"What is item {i}? " + "Tell me more. " * i, "answer": f"Item {i} is a small thing."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_inspect_measures_what_prepare_would_see(tmp_path, tiny_model_dir):
    path = write_qa(tmp_path / "qa.jsonl")
    data, model = DataConfig(path=path), ModelConfig(name=str(tiny_model_dir))
    template, tokenization = TemplateConfig(), TokenizationConfig(truncation_side="right")
    result = inspect_data(path, data, model, template, tokenization)
    prepared = prepare(RunPaths(tmp_path / "run"), model, data, template, tokenization, SplitConfig(test_size=2))
    manifest = prepared.manifest
    assert result.stats.num_records == 12 and result.shape == "qa" and result.template == manifest.template == "chat"
    assert result.stats.truncation.max_length == manifest.max_length  # auto: the same p99, the same context cap
    assert result.stats.truncation.examples_truncated == manifest.counts.truncated
    assert result.max_length_source == f"auto: p99 of total lengths, capped by the model's context of " \
                                       f"{manifest.model_context}"
    totals = result.total_lengths
    assert len(totals) == 12 and max(totals) == result.stats.lengths["total"].max
    assert "total_lengths" not in result.to_dict()  # the JSON of `data inspect --json` stays one screen


def test_a_given_max_length_is_named_as_given(tmp_path, tiny_model_dir):
    path = write_qa(tmp_path / "qa.jsonl")
    result = inspect_data(path, DataConfig(), ModelConfig(name=str(tiny_model_dir)), TemplateConfig(name="qa"),
                          TokenizationConfig(max_length=20))
    assert result.stats.truncation.max_length == 20 and result.template == "qa"
    assert result.max_length_source == "given (tokenization.max_length=20)"
    assert result.plot is None


def test_api_writes_the_histogram_png_atomically(tmp_path, tiny_model_dir):
    from tunesmith import api

    path = write_qa(tmp_path / "qa.jsonl")
    plot = tmp_path / "out" / "lengths.png"
    result = api.inspect_data(path, model=ModelConfig(name=str(tiny_model_dir)), plot=plot)
    assert result.plot == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in plot.parent.iterdir()] == ["lengths.png"]
