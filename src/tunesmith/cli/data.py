"""`tunesmith data inspect FILE` (what a dataset looks like before training on it) and `data prepare CONFIG`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunesmith.cli import add_config_arguments


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and prepare training data")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect", help="shape, token lengths, truncation, duplicates and baked-in templates of a data file",
        description="Load FILE (.jsonl, .json, .csv, .parquet or a datasets folder), detect its shape, measure "
                    "token lengths with the model's tokenizer and template, and report what training would see.")
    inspect.add_argument("file", metavar="FILE", help="data file or a folder saved by datasets")
    inspect.add_argument("--model", default=None, help="model whose tokenizer measures lengths (default: the "
                                                        "config default, smollm2-135m-instruct)")
    inspect.add_argument("--max-length", type=int, default=None, metavar="N",
                         help="report truncation at N tokens (default: auto, the p99 of total lengths)")
    inspect.add_argument("--template", default=None, help="template lengths are measured with (default: auto)")
    inspect.add_argument("--plot", default=None, metavar="PATH",
                         help="where to write the length histogram PNG (default: ./<file stem>_lengths.png)")
    inspect.add_argument("--no-plot", action="store_true", help="do not write the histogram")
    inspect.add_argument("--shape", default="auto", help="record shape (default: detected from all records)")
    for part in ("prompt", "input", "response", "system", "messages", "text"):
        inspect.add_argument(f"--{part}-key", default=None, metavar="KEY", help=f"column holding the {part}")
    inspect.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                         help="fail on invalid records (default) or skip them and count them")
    inspect.add_argument("--json", action="store_true", help="print the full result as JSON")
    inspect.set_defaults(handler=_inspect)

    prepare = actions.add_parser(
        "prepare", help="tokenize the config's data into train/test splits in the run folder",
        description="Load data.path, split it (or use data.test_path), apply the template, tokenize with masked "
                    "labels, and write prepared/{train,test} (datasets) and manifest.json into the run folder. "
                    "Re-running with the same data and settings reuses them.")
    add_config_arguments(prepare, config_required=True)
    prepare.set_defaults(handler=_prepare)


def _inspect(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.config import config_from_dict

    keys = {f"{part}_key": getattr(args, f"{part}_key") for part in
            ("prompt", "input", "response", "system", "messages", "text")}
    raw = {"data": {"shape": args.shape, "on_error": args.on_error, **{k: v for k, v in keys.items() if v}},
           "tokenization": {"max_length": args.max_length or "auto"}}
    if args.model:
        raw["model"] = {"name": args.model}
    if args.template:
        raw["template"] = {"name": args.template}
    config = config_from_dict(raw, source="command line")
    plot = None if args.no_plot else args.plot or f"{Path(args.file.rstrip('/')).stem}_lengths.png"
    result = api.inspect_data(args.file, config.data, config.model, config.template, config.tokenization, plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_inspection(result))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from tunesmith import api

    print("\n".join(api.prepare_data(args.config, args.overrides).summary_lines()))
    return 0


def format_inspection(result) -> str:
    """The readable summary of an `api.inspect_data` result."""
    stats = result.stats
    lines = [f"{result.file}: {stats.num_records:,} records",
             f"shape:      {result.shape} ({result.reason})",
             f"tokens:     measured with {result.model}, template {result.template}", ""]
    lines.append(f"{'tokens':<10}{'min':>8}{'median':>9}{'p95':>8}{'p99':>8}{'max':>8}{'mean':>9}")
    for name, s in stats.lengths.items():
        lines.append(f"{name:<10}{s.min:>8}{s.median:>9g}{s.p95:>8}{s.p99:>8}{s.max:>8}{s.mean:>9g}")
    cut = stats.truncation
    if cut is not None:
        lines += ["", f"max_length: {cut.max_length} ({result.max_length_source})",
                  f"truncation: {cut.examples_truncated:,} examples ({cut.examples_share:.1%}) are longer; "
                  f"{cut.response_tokens_cut:,} of {cut.response_tokens_total:,} response tokens "
                  f"({cut.response_share_cut:.1%}) would be cut"]
        if cut.examples_without_response:
            lines.append(f"            {cut.examples_without_response:,} examples would keep no response token "
                         f"and be dropped")
    dup = stats.duplicates
    lines += ["", f"duplicates: {dup.exact:,} exact, {dup.near:,} near, {dup.conflicting_prompts:,} prompts "
                  f"with different answers"]
    lines += [f"  exact:       {', '.join(group)}" for group in dup.exact_examples]
    lines += [f"  near:        {a} ~ {b} (similarity {sim})" for a, b, sim in dup.near_examples]
    lines += [f"  conflicting: {', '.join(group)}" for group in dup.conflicting_examples]
    baked = stats.baked_templates
    if baked.records:
        markers = ", ".join(f"{m} x{n}" for m, n in baked.markers.items())
        lines += ["", f"baked-in templates: {baked.records:,} records already contain template markers "
                      f"({markers}); they would be templated twice: strip them, or use template none"]
        lines += [f"  {example}" for example in baked.examples]
    else:
        lines += ["", "baked-in templates: none found"]
    if result.skipped:
        lines += ["", f"skipped: {len(result.skipped):,} invalid records (--on-error skip)"]
        lines += [f"  {problem}" for problem in result.skipped[:10]]
        if len(result.skipped) > 10:
            lines.append(f"  ... and {len(result.skipped) - 10} more")
    if result.plot:
        lines += ["", f"plot:       {result.plot}"]
    return "\n".join(lines)
