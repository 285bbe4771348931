"""The Python API: one function per user action, plus the `Tuner` facade; the CLI calls only these.

Each function resolves the config once and hands each stage only its own section.
"""

from __future__ import annotations


def show_config(config_path: str | None = None, overrides: list[str] | None = None) -> str:
    """The resolved config (file + overrides + defaults for every other key) as YAML.

    Raises:
        ConfigError: the file or an override is invalid.
    """
    from tunesmith.config import config_to_yaml, load_config

    return config_to_yaml(load_config(config_path, overrides))
