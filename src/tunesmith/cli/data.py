"""`tunesmith data inspect FILE` (what a dataset looks like before training on it) and `data prepare CONFIG`.

The flags' defaults and choices come from the config schema (`DataConfig`...), so they are written down once.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from tunesmith.cli import add_config_arguments, field_help

KEY_PARTS = ("prompt", "input", "response", "system", "messages", "text")
"""`--<part>-key` flags, one per `DataConfig.<part>_key`."""


def _max_length(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _add_inspect_flags(inspect: argparse.ArgumentParser) -> None:
    from tunesmith.config import DataConfig, ModelConfig, TemplateConfig, TokenizationConfig

    data = DataConfig.model_fields
    inspect.add_argument("--model", default=ModelConfig.model_fields["name"].default,
                         help="model whose tokenizer measures lengths " + _default(ModelConfig, "name"))
    inspect.add_argument("--max-length", type=_max_length, metavar="N",
                         default=TokenizationConfig.model_fields["max_length"].default,
                         help=field_help(TokenizationConfig, "max_length"))
    inspect.add_argument("--template", default=TemplateConfig.model_fields["name"].default,
                         choices=typing.get_args(TemplateConfig.model_fields["name"].annotation),
                         help="template lengths are measured with " + _default(TemplateConfig, "name"))
    inspect.add_argument("--plot", default=None, metavar="PATH",
                         help="where to write the length histogram PNG (default: ./<file stem>_lengths.png)")
    inspect.add_argument("--no-plot", action="store_true", help="do not write the histogram")
    inspect.add_argument("--shape", default=data["shape"].default, help=field_help(DataConfig, "shape"))
    for part in KEY_PARTS:
        inspect.add_argument(f"--{part}-key", default=None, metavar="KEY",
                             help=field_help(DataConfig, f"{part}_key", show_default=False))
    inspect.add_argument("--on-error", choices=typing.get_args(data["on_error"].annotation),
                         default=data["on_error"].default,
                         help=field_help(DataConfig, "on_error") + "; inspect reports every invalid record and "
                              "exits 1 unless skip")
    inspect.add_argument("--strip-template", choices=["auto", "true", "false"],
                         default=str(data["strip_template"].default).lower(),
                         help=field_help(DataConfig, "strip_template"))
    inspect.add_argument("--json", action="store_true", help="print the full result as JSON")


def _default(section, key: str) -> str:
    return f"(default: {section.model_fields[key].default})"


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and prepare training data")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect", help="shape, token lengths, truncation, duplicates and baked-in templates of a data file",
        description="Load FILE (.jsonl, .json, .csv, .parquet or a datasets folder), detect its shape, measure "
                    "token lengths with the model's tokenizer and template, and report what training would see.")
    inspect.add_argument("file", metavar="FILE", nargs="+",
                         help="data file or a folder saved by datasets; several (the files of data.sources) are "
                              "inspected one by one, then compared")
    _add_inspect_flags(inspect)
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

    keys = {f"{part}_key": getattr(args, f"{part}_key") for part in KEY_PARTS}
    raw = {"data": {"shape": args.shape, "on_error": args.on_error, "strip_template": args.strip_template,
                    **{k: v for k, v in keys.items() if v}},
           "tokenization": {"max_length": args.max_length}, "model": {"name": args.model},
           "template": {"name": args.template}}
    config = config_from_dict(raw, source="command line")
    results = []
    for file in args.file:
        plot = None if args.no_plot else args.plot or f"{Path(file.rstrip('/')).stem}_lengths.png"
        results.append(api.inspect_data(file, config.data, config.model, config.template, config.tokenization,
                                        plot if len(args.file) == 1 or not args.plot else None))
    if args.json:
        shown = [r.to_dict() for r in results]
        print(json.dumps(shown[0] if len(shown) == 1 else shown, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(format_inspection(r) for r in results))
        if len(results) > 1:
            print("\n" + format_sources(results))
    status = 0
    for result in results:
        if result.is_clean:
            continue
        count, status = len(result.skipped), 1
        where = f" in {result.file}" if len(results) > 1 else ""
        print(f"error: {count:,} of {result.records_read:,} records{where} {'is' if count == 1 else 'are'} "
              f"invalid (listed above with what training does with them); --on-error skip accepts them here",
              file=sys.stderr)
    return status


def format_sources(results) -> str:
    """Several files side by side: what each would give a mix (`data.sources`)."""
    total = sum(r.stats.num_records for r in results) or 1
    lines = [f"{'source':<40}{'records':>10}{'share':>8}{'mean tokens':>13}{'truncated':>11}  shape"]
    for r in results:
        cut = r.stats.truncation
        lines.append(f"{r.file[-40:]:<40}{r.stats.num_records:>10,}{r.stats.num_records / total:>8.1%}"
                     f"{r.stats.lengths['total'].mean:>13g}{(cut.examples_truncated if cut else 0):>11,}  {r.shape}")
    return "\n".join(lines)


def _prepare(args: argparse.Namespace) -> int:
    from tunesmith import api

    print("\n".join(api.prepare_data(args.config, args.overrides).summary_lines()))
    return 0


def format_inspection(result) -> str:
    """The readable summary of an `api.inspect_data` result."""
    stats = result.stats
    invalid = len(result.skipped)
    lines = [f"{result.file}: {stats.num_records:,} records"
             + (f" ({invalid:,} invalid of {result.records_read:,}, listed at the end)" if invalid else ""),
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
    lines += _template_lines(result)
    lines += _invalid_lines(result)
    if result.plot:
        lines += ["", f"plot:       {result.plot}"]
    return "\n".join(lines)


def _template_lines(result) -> list[str]:
    """The baked-in template: stripped (one record before and after), or still there and how to strip it."""
    stripped, baked, lines = result.stripped, result.stats.baked_templates, [""]
    if stripped and stripped.records:
        from tunesmith.data.strip import FORM_LABELS

        lines += [f"baked-in templates: stripped {FORM_LABELS[stripped.form]} from {stripped.records:,} of "
                  f"{stripped.total:,} prompts (data.strip_template: {stripped.setting}), as prepare will; e.g. "
                  f"{stripped.where}:",
                  f"  before: {_clip(stripped.before)}", f"  after:  {_clip(stripped.after)}"]
    if baked.records:
        markers = ", ".join(f"{m} x{n}" for m, n in baked.markers.items())
        strip = "data.strip_template: true strips them" if stripped and stripped.form else "strip them"
        lines += [f"baked-in templates: {baked.records:,} records {'still ' if len(lines) > 1 else ''}contain "
                  f"template markers ({markers}); they would be templated twice: {strip}, or use template none"]
        lines += [f"  {example}" for example in baked.examples]
    elif len(lines) == 1:
        lines.append("baked-in templates: none found")
    return lines


def _clip(text: str, width: int = 100) -> str:
    shown = repr(text)
    return shown if len(shown) <= width else shown[:width - 3] + "..."


def _invalid_lines(result) -> list[str]:
    """Every invalid record grouped by kind (the first few of each), then what training does with them."""
    if not result.invalid:
        return []
    count, read = len(result.skipped), result.records_read
    head = (f"skipped: {count:,} invalid records of {read:,}" if result.on_error == "skip"
            else f"invalid records: {count:,} of {read:,}")
    lines = ["", f"{head} ({count / read:.1%}), by kind:"]
    for group in result.invalid:
        lines.append(f"  {group.count:>6,} x {group.kind}")
        lines += [f"           {example}" for example in group.examples]
        if group.count > len(group.examples):
            lines.append(f"           ... and {group.count - len(group.examples):,} more")
    return lines + [result.invalid_outcome]
