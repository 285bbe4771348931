"""Helpers shared by the training tests: a tiny question-answer data file, training a prepared run the way the
API does (loss plot included), and reading its loss curve back."""

from __future__ import annotations

import json

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


def prepare_run(config):
    """The config's run folder, created, with its data prepared (as the API does it); returns its RunPaths."""
    from tunesmith.prepare.pipeline import prepare
    from tunesmith.runs import create_run

    return prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                   config.split).paths


def write_loss_plot(paths, metrics: list[dict]) -> None:
    """What the API hands `train` as `on_metrics`: the report's loss chart as `loss.png`."""
    from tunesmith.report.charts import loss_chart
    from tunesmith.runs import atomic_write_bytes

    png = loss_chart(metrics)
    if png is not None:
        atomic_write_bytes(paths.loss_plot, png)


def train_run(config, paths, resume=False):
    from tunesmith.train.loop import train

    return train(paths, config.model, config.training, config.template, resume=resume, on_metrics=write_loss_plot)


def losses(paths) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, paths.metrics.read_text().splitlines()) if "loss" in m}
