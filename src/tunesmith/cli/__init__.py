"""The `tunesmith` command: parse arguments, call one api function, print the result.

Each command group lives in its own module with a `register(subparsers)` function. The library raises
TunesmithError for user mistakes; only here are they turned into one line on stderr and exit code 1.
Tracebacks are shown only with TUNESMITH_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import sys

from tunesmith import __version__
from tunesmith.errors import TunesmithError

COMMAND_GROUPS = ["pipeline", "data", "train", "plan", "evaluate", "use", "generate_data", "ui"]
"""Modules of tunesmith.cli that register commands, in the order `--help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="tunesmith", description="Instruction finetuning of small LLMs.")
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        try:
            module = importlib.import_module(f"tunesmith.cli.{group}")
        except ModuleNotFoundError as e:
            if e.name == f"tunesmith.cli.{group}":
                continue  # group not built yet
            raise
        module.register(subparsers)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    """The `CONFIG` file and `--set KEY=VALUE` overrides shared by every command that runs a pipeline stage."""
    parser.add_argument("config", nargs=None if config_required else "?", metavar="CONFIG",
                        help="YAML config file (see examples/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.learning_rate=2e-5 (repeatable)")


def field_help(section, key: str, show_default: bool = True) -> str:
    """A flag's help from the config schema: the field's docstring and its default, so both live only in config.py.

    >>> field_help(GenerateConfig, "batch_size")  # doctest: +SKIP
    'prompts generated together (default: 8)'
    """
    info = section.model_fields[key]
    text = (info.description or "").rstrip(".")
    if text[1:2].islower():  # "Longest answer" -> "longest answer", but "TCP port" stays
        text = text[0].lower() + text[1:]
    if show_default and info.default is not None:
        text += f" (default: {info.default})"
    return text.replace("%", "%%")  # argparse %-formats help texts


def quiet_libraries() -> None:
    """Keep the terminal for tunesmith's own progress bars and results: library chatter only on errors."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|accelerate)\b.*")


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("TUNESMITH_DEBUG") != "1":
        quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except TunesmithError as e:
        if os.environ.get("TUNESMITH_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
