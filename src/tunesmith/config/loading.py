"""Reading a config: YAML, `--set` overrides, validation into the schema with every problem at once, saving and hashing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.errors import ConfigError

from tunesmith.config.schema import Config, Section


def validate_section(cls: type[Section], raw: dict, source: str) -> Section:
    """Validate a dict into one config section (for commands that take flags, not a config file).

    Raises:
        ConfigError: listing every invalid key and value at once.
    """
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise _format_validation_error(e, source) from None


def _format_validation_error(error: ValidationError, source: str) -> ConfigError:
    problems = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(f"{source}: unknown key {key!r} (check the spelling; `tunesmith config show` lists keys)")
        elif key:
            problems.append(f"{source}: {key}={item.get('input')!r}: {message}")
        else:
            problems.append(f"{source}: {message}")
    return ConfigError(problems)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.learning_rate=2e-5` -> (["training", "learning_rate"], 2e-05); values are read as YAML.

    Raises:
        ConfigError: the text has no `=` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. training.learning_rate=2e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads 2e-5 as a string (no dot); numbers people type should stay numbers.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return [p for p in key.strip().split(".")], value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of a raw config dict with `--set` overrides applied (validation comes later)."""
    result = json.loads(json.dumps(raw))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {k!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, training, ...)")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Build a validated Config from an optional YAML file, a base dict and `--set` overrides.

    Relative data paths in a file are resolved against the file's folder, so a config works from any cwd.

    Raises:
        ConfigError: listing every invalid key and value at once.
    """
    raw = dict(base or {})
    source = "config"
    if path is not None:
        source = str(path)
        raw = _deep_merge(raw, read_yaml(path))
        data = raw.get("data")
        if isinstance(data, dict):
            for key in ("path", "test_path"):
                if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                    candidate = Path(path).parent / data[key]
                    data[key] = str(candidate) if candidate.exists() else data[key]
        evaluation = raw.get("eval")
        if isinstance(evaluation, dict) and isinstance(evaluation.get("benchmarks"), list):
            evaluation["benchmarks"] = [_beside(path, b) for b in evaluation["benchmarks"]]
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def _beside(config_path: str | Path, value):
    """A relative file named in a config, as the path beside the config file when one is there (else as given)."""
    if not isinstance(value, str) or Path(value).is_absolute():
        return value
    candidate = Path(config_path).parent / value
    return str(candidate) if candidate.exists() else value


def config_from_dict(raw: dict, source: str = "config") -> Config:
    """Validate a raw dict into a Config.

    Raises:
        ConfigError: listing every invalid key and value at once.
    """
    return validate_section(Config, raw, source)


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_to_yaml(config: Config) -> str:
    """The config as YAML text, every key written out so a run can be repeated exactly."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_hash(section: BaseModel | dict) -> str:
    """A stable short hash of a config section, used to know when prepared data can be reused."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
