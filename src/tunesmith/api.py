"""The Python API: one function per user action, plus the `Tuner` facade; the CLI calls only these.

Each function resolves the config once and hands each stage only its own section.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.config import FromDocsConfig, SelfInstructConfig, TeacherConfig
    from tunesmith.datagen import DatagenSummary
    from tunesmith.prepare import PrepareResult


def show_config(config_path: str | None = None, overrides: list[str] | None = None) -> str:
    """The resolved config (file + overrides + defaults for every other key) as YAML.

    Raises:
        ConfigError: the file or an override is invalid.
    """
    from tunesmith.config import config_to_yaml, load_config

    return config_to_yaml(load_config(config_path, overrides))


def prepare_data(config_path: str | None = None, overrides: list[str] | None = None) -> PrepareResult:
    """Tokenize the configured data into the run folder's train/test splits (reused when inputs are unchanged).

    Raises:
        ConfigError: the config is invalid or has no data path.
        DataError: the data is invalid (every problem listed).
    """
    from tunesmith.config import load_config
    from tunesmith.prepare import prepare

    return prepare(load_config(config_path, overrides))


def evaluate_run(target: str, model: str | None = None, data: str | None = None, limit: int | None = None,
                 mc: str | None = None, max_new_tokens: int | None = None, out: str | None = None,
                 progress: bool = True) -> dict:
    """Evaluate a run (base and/or finetuned) or a plain model; returns what `eval/metrics.json` holds.

    A run folder's results go to `<run>/eval/` (test split), `<run>/eval/data-<stem>/` (`data`) or
    `<run>/eval/mc-<stem>.json` (`mc`); a plain model's only to `out` when given.

    Raises:
        RunError: no model or nothing to evaluate on; DataError: an invalid data or multiple-choice file.
    """
    from pathlib import Path

    from tunesmith import evaluation
    from tunesmith.config import Config
    from tunesmith.generate import locate_model
    from tunesmith.runs import open_run

    _, info = locate_model(target)
    is_run = (Path(target) / "config.yaml").is_file()
    paths, config = open_run(target) if is_run else (None, Config())
    labels = evaluation.model_labels(model, is_trained=info is not None, compare_base=config.eval.compare_base)
    overrides = {"limit": limit, "max_new_tokens": max_new_tokens}
    eval_config = config.eval.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    precision = config.training.precision
    if mc is not None:
        out_file = Path(out) if out else (paths.eval_dir / f"mc-{Path(mc).stem}.json" if paths else None)
        return evaluation.evaluate_choices(target, labels, mc, eval_config, precision=precision, out_file=out_file,
                                           progress=progress)
    out_dir = Path(out) if out else None
    if out_dir is None and paths is not None:
        out_dir = paths.eval_dir if data is None else paths.eval_dir / f"data-{Path(data).stem}"
    return evaluation.evaluate(target, labels, eval_config, paths=paths, data=data, data_config=config.data,
                               tokenization=config.tokenization, precision=precision, out_dir=out_dir,
                               progress=progress)


def generate_self_instruct(seeds: str, out: str, teacher: TeacherConfig, options: SelfInstructConfig,
                           progress: bool = True) -> DatagenSummary:
    """Grow `out` to `options.num_examples` alpaca records written by a teacher LLM from seed tasks (resumable).

    Raises:
        DataError: unreadable seeds or an `out` file this generator did not write.
        ConfigError: the teacher rejects the URL, key or model.
    """
    from tunesmith import datagen

    with _teacher(teacher) as t:
        return datagen.self_instruct(seeds, out, t, options, progress=progress)


def generate_qa_from_docs(docs: str, out: str, teacher: TeacherConfig, options: FromDocsConfig,
                          progress: bool = True) -> DatagenSummary:
    """Question/answer pairs written by a teacher LLM from every chunk of the documents under `docs` (resumable).

    Raises:
        DataError: no readable documents or an `out` file this generator did not write.
        ConfigError: the teacher rejects the URL, key or model.
    """
    from tunesmith import datagen

    with _teacher(teacher) as t:
        return datagen.qa_from_docs(docs, out, t, options, progress=progress)


@contextlib.contextmanager
def _teacher(config: TeacherConfig):
    """The teacher a config names, its API key read here from the environment variable the config names."""
    from tunesmith import datagen

    teacher = datagen.build_teacher(config, api_key=os.environ.get(config.key_env) or None)
    try:
        yield teacher
    finally:
        teacher.close()
