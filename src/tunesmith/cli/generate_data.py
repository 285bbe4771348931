"""`tunesmith generate self-instruct` and `tunesmith generate from-docs`: training data written by a teacher LLM.

The command word `generate` is shared with `tunesmith generate RUN --prompt ...` (text from a trained model,
in `cli/use.py`), which hands `self-instruct` and `from-docs` over to `main_self_instruct` / `main_from_docs`
here. Each parses flags into config sections, calls one api function and prints its summary.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from tunesmith.cli import field_help

if TYPE_CHECKING:  # config (pydantic) is imported only when a generator runs, so `tunesmith --help` stays fast
    from tunesmith.config import Section

TARGETS = ("self-instruct", "from-docs")
"""First words after `generate` that name a data generator rather than a run or model."""


def register(subparsers) -> None:
    """Nothing to register: `generate` belongs to `cli/use.py`, which hands TARGETS to `run`."""


def run(target: str, argv: list[str]) -> int:
    """`tunesmith generate TARGET ...` for a data generator; `cli/use.py` calls this with the words after TARGET."""
    return {"self-instruct": main_self_instruct, "from-docs": main_from_docs}[target](argv)


def _help(section: type[Section], key: str) -> str:
    return field_help(section, key)


def _add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    from tunesmith.config import TeacherConfig

    group = parser.add_argument_group("teacher")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--teacher-url", metavar="URL", help=_help(TeacherConfig, "url"))
    which.add_argument("--teacher-local", metavar="MODEL", help=_help(TeacherConfig, "local"))
    group.add_argument("--teacher-model", metavar="NAME", help=_help(TeacherConfig, "model"))
    group.add_argument("--teacher-key-env", metavar="VAR", help=_help(TeacherConfig, "key_env"))
    group.add_argument("--concurrency", type=int, metavar="N", help=_help(TeacherConfig, "concurrency"))
    group.add_argument("--max-retries", type=int, metavar="N", help=_help(TeacherConfig, "max_retries"))
    group.add_argument("--timeout", dest="timeout_s", type=float, metavar="SECONDS",
                       help=_help(TeacherConfig, "timeout_s"))
    group.add_argument("--backoff", dest="backoff_s", type=float, metavar="SECONDS",
                       help=_help(TeacherConfig, "backoff_s"))
    group.add_argument("--max-tokens", type=int, metavar="N", help=_help(TeacherConfig, "max_tokens"))
    group.add_argument("--temperature", type=float, metavar="T", help=_help(TeacherConfig, "temperature"))
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _section(section: type[Section], args: argparse.Namespace, keys: dict[str, str], source: str):
    """Validate the flags that were given into a config section (the rest keep config.py's defaults)."""
    from tunesmith.config import validate_section

    given = {key: getattr(args, dest) for key, dest in keys.items() if getattr(args, dest) is not None}
    return validate_section(section, given, source)


_TEACHER_KEYS = {"url": "teacher_url", "local": "teacher_local", "model": "teacher_model",
                 "key_env": "teacher_key_env", "concurrency": "concurrency", "max_retries": "max_retries",
                 "timeout_s": "timeout_s", "backoff_s": "backoff_s", "max_tokens": "max_tokens",
                 "temperature": "temperature"}


def build_self_instruct_parser() -> argparse.ArgumentParser:
    from tunesmith.config import SelfInstructConfig

    parser = argparse.ArgumentParser(
        prog="tunesmith generate self-instruct",
        description="Alpaca-style self-instruct: a teacher LLM writes new instruction/input/output examples from "
                    "a few seed tasks; near-duplicates (ROUGE-L), too short/long and non-text tasks are dropped. "
                    "Rerunning the same command resumes: it appends only what is missing.")
    parser.add_argument("--seeds", required=True, metavar="FILE",
                        help="seed tasks: Stanford seed_tasks.jsonl form or any data file tunesmith reads")
    parser.add_argument("-n", "--num-examples", dest="num_examples", type=int, metavar="N",
                        help=_help(SelfInstructConfig, "num_examples"))
    parser.add_argument("--out", required=True, metavar="FILE.jsonl", help="alpaca JSONL output (appended to)")
    parser.add_argument("--tasks-per-request", type=int, metavar="N",
                        help=_help(SelfInstructConfig, "tasks_per_request"))
    parser.add_argument("--similarity-threshold", type=float, metavar="F",
                        help=_help(SelfInstructConfig, "similarity_threshold"))
    parser.add_argument("--max-requests", type=int, metavar="N", help=_help(SelfInstructConfig, "max_requests"))
    parser.add_argument("--seed", type=int, metavar="N", help=_help(SelfInstructConfig, "seed"))
    _add_teacher_arguments(parser)
    return parser


def build_from_docs_parser() -> argparse.ArgumentParser:
    from tunesmith.config import FromDocsConfig

    parser = argparse.ArgumentParser(
        prog="tunesmith generate from-docs",
        description="Question/answer pairs from your documents (.md, .txt, .html, .pdf): each chunk is sent to a "
                    "teacher LLM, near-duplicate questions are dropped, and --grade keeps only pairs the teacher "
                    "finds grounded in the chunk. Rerunning the same command resumes where it stopped.")
    parser.add_argument("docs", metavar="DOCS_DIR", help="folder of documents (or one document)")
    parser.add_argument("--out", required=True, metavar="FILE.jsonl", help="qa JSONL output (appended to)")
    parser.add_argument("--per-chunk", type=int, metavar="N", help=_help(FromDocsConfig, "per_chunk"))
    parser.add_argument("--chunk-tokens", type=int, metavar="N", help=_help(FromDocsConfig, "chunk_tokens"))
    parser.add_argument("--grade", action="store_const", const=True, default=None,
                        help=_help(FromDocsConfig, "grade"))
    parser.add_argument("--similarity-threshold", type=float, metavar="F",
                        help=_help(FromDocsConfig, "similarity_threshold"))
    _add_teacher_arguments(parser)
    return parser


def main_self_instruct(argv: list[str]) -> int:
    """`tunesmith generate self-instruct ...`; errors propagate to the CLI's one-line error handler."""
    from tunesmith import api
    from tunesmith.config import SelfInstructConfig, TeacherConfig

    args = build_self_instruct_parser().parse_args(argv)
    teacher = _section(TeacherConfig, args, _TEACHER_KEYS, "teacher")
    options = _section(SelfInstructConfig, args, {k: k for k in ("num_examples", "tasks_per_request",
                                                                 "similarity_threshold", "max_requests", "seed")},
                       "self-instruct")
    with _summary_on_failure():
        summary = api.generate_self_instruct(args.seeds, args.out, teacher, options, progress=not args.no_progress)
    print(summary.text())
    return 0


def main_from_docs(argv: list[str]) -> int:
    """`tunesmith generate from-docs ...`; errors propagate to the CLI's one-line error handler."""
    from tunesmith import api
    from tunesmith.config import FromDocsConfig, TeacherConfig

    args = build_from_docs_parser().parse_args(argv)
    teacher = _section(TeacherConfig, args, _TEACHER_KEYS, "teacher")
    options = _section(FromDocsConfig, args, {k: k for k in ("per_chunk", "chunk_tokens", "grade",
                                                             "similarity_threshold")}, "from-docs")
    with _summary_on_failure():
        summary = api.generate_qa_from_docs(args.docs, args.out, teacher, options, progress=not args.no_progress)
    print(summary.text())
    return 0


@contextlib.contextmanager
def _summary_on_failure():
    """A run the teacher answered nothing of still prints its summary; the CLI's handler then prints the error
    (naming the last failure) and exits 1."""
    from tunesmith.errors import TeacherError

    try:
        yield
    except TeacherError as e:
        print(e.report)
        raise
