"""The three-line facade over the api: `Tuner(model).load_data(path).train(**settings)`, then evaluate, generate.

It holds a config and the run it made, and calls the same `api` functions the CLI calls, so notebook users
and CLI users get the same runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.api import build_report, evaluate_run, train_config

if TYPE_CHECKING:
    from tunesmith.config import Config


TRAINING_KEYS_ELSEWHERE = {"max_length": "tokenization", "padding_side": "tokenization",
                           "truncation_side": "tokenization", "train_on": "tokenization", "test_size": "split",
                           "template": "template.name", "system_prompt": "template", "runs_dir": "output",
                           "name": "output"}
"""`Tuner.train` keywords that belong to another config section than `training`."""


class Tuner:
    """The three-line API: `Tuner(model).load_data(path, ...).train(**settings)`, then `.evaluate()`, `.generate()`.

    >>> tuner = Tuner("smollm2-135m-instruct").load_data("qa.jsonl", input_key="question", output_key="answer")
    >>> tuner.train(max_steps=20, learning_rate=1e-4, method="lora")  # doctest: +SKIP
    """

    def __init__(self, model: str | None = None, config: str | Config | None = None, **overrides):
        from tunesmith.config import Config, load_config

        base = config if isinstance(config, Config) else load_config(config)
        self.config = _with(base, {"model.name": model} if model else {})
        self.config = _with(self.config, overrides)
        self.run: Path | None = None
        self.model_dir: Path | None = None
        self.notes: list[str] = []
        """What preparing the last `train` said (skipped invalid records, a stripped template): a notebook has no
        CLI to print them, so they are kept here and also issued as one warning."""
        self._generator = None

    def load_data(self, path: str | Path, input_key: str | None = None, output_key: str | None = None,
                  **data_settings) -> Tuner:
        """Use a data file; `input_key`/`output_key` name the prompt and answer columns (any shape otherwise)."""
        settings = {"data.path": str(path), **{f"data.{k}": v for k, v in data_settings.items()}}
        if input_key:
            settings["data.prompt_key"] = input_key
        if output_key:
            settings["data.response_key"] = output_key
        self.config = _with(self.config, settings)
        return self

    def train(self, resume: bool = False, **settings) -> Tuner:
        """Prepare and train; keywords are training settings (`max_steps=20`, `method="lora"`, `max_length=256`).

        What preparing reported (skipped records, a stripped template) lands in `notes` and is warned once
        (`warnings.warn`), before training starts.

        Raises:
            ConfigError: an unknown or invalid setting.
        """
        from tunesmith.config import TrainingConfig

        dotted = {}
        for key, value in settings.items():
            if key in TrainingConfig.model_fields:
                dotted[f"training.{key}"] = value
            elif key in TRAINING_KEYS_ELSEWHERE:
                where = TRAINING_KEYS_ELSEWHERE[key]
                dotted[where if "." in where else f"{where}.{key}"] = value
            else:
                dotted[key] = value  # "section.key" passes through; anything else fails validation by name
        self.config = _with(self.config, dotted)
        self.notes = []
        prepared, result = train_config(self.config, resume=resume, on_prepared=self._keep_notes)
        self.run, self.model_dir, self._generator = prepared.paths.root, result.model_dir, None
        return self

    def _keep_notes(self, prepared) -> None:
        """`notes` of the preparation, and one warning listing them (a warning per note would repeat itself)."""
        self.notes = prepared.notes()
        if self.notes:
            warnings.warn("\n".join(self.notes), UserWarning)

    def evaluate(self, which: str | None = None, limit: int | None = None, progress: bool = True) -> dict:
        """Test loss and generation metrics (base vs finetuned by default) as a plain dict.

        Raises:
            RunError: nothing trained yet.
        """
        return evaluate_run(str(self._require_run()), model=which, limit=limit, progress=progress)

    def generate(self, prompt: str, **options) -> str:
        """The finetuned model's answer to one prompt, with the template it was trained with.

        Keywords are `GenerationOptions` fields (`max_new_tokens=64`, `do_sample=True`...); the model runs in
        `training.precision`.
        """
        from tunesmith.config import GenerateConfig
        from tunesmith.use.generation import GenerationOptions, load_for_inference

        if self._generator is None:
            self._generator = load_for_inference(str(self._require_run()), precision=self.config.training.precision)
        decoding = GenerationOptions(**{"max_new_tokens": GenerateConfig().max_new_tokens, **options})
        return self._generator.generate([self._generator.render(prompt)], decoding, batch_size=1)[0].text

    def report(self) -> Path:
        """Write and return the run's HTML report."""
        return build_report(str(self._require_run()))

    def _require_run(self) -> Path:
        from tunesmith.errors import RunError

        if self.run is None:
            raise RunError("nothing trained yet: call .train() first")
        return self.run


def _with(config: Config, dotted: dict) -> Config:
    """A copy of a config with `section.key` values set, validated as a whole.

    Raises:
        ConfigError: an unknown key or an invalid value, named.
    """
    from tunesmith.config import TrainingConfig, config_from_dict
    from tunesmith.errors import ConfigError

    raw = config.model_dump(mode="json")
    for key, value in dotted.items():
        section, _, field_name = key.partition(".")
        if not field_name:
            raw.setdefault("_unknown", {})[section] = value
            continue
        raw.setdefault(section, {})[field_name] = value
    unknown = raw.pop("_unknown", None)
    if unknown:
        valid = ", ".join(sorted(TrainingConfig.model_fields))
        raise ConfigError([f"unknown setting {k!r}; training settings are {valid}" for k in unknown])
    return config_from_dict(raw, "Tuner")
