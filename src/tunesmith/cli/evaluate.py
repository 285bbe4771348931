"""`tunesmith eval`, `tunesmith report`, `tunesmith runs list|compare`: measure, show, compare."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from tunesmith.config import OutputConfig

    evaluate = subparsers.add_parser(
        "eval", help="test loss, generation metrics and error shares of a run (base vs finetuned) or a model",
        description="Evaluates on the run's test split (or --data FILE), or scores a multiple-choice file (--mc) "
                    "by log-likelihood as lm-evaluation-harness does. Results of a run go to <run>/eval/.")
    evaluate.add_argument("target", metavar="RUN|MODEL", help="run folder, trained model folder, or any model")
    evaluate.add_argument("--model", choices=["base", "finetuned", "both"], default=None,
                          help="which weights of a run to evaluate (default: both, per eval.compare_base)")
    evaluate.add_argument("--data", metavar="FILE", help="evaluate on this data file instead of the test split")
    evaluate.add_argument("--limit", type=_positive, metavar="N", help="use at most N examples")
    evaluate.add_argument("--mc", metavar="FILE.jsonl",
                          help="multiple-choice questions ({question, choices, answer} or ARC's native shape)")
    evaluate.add_argument("--max-new-tokens", type=_positive, metavar="N", help="longest generated answer")
    evaluate.add_argument("--out", metavar="PATH", help="where to write results (default: <run>/eval/...)")
    evaluate.set_defaults(handler=_eval)

    report = subparsers.add_parser("report", help="write a run's self-contained HTML report")
    report.add_argument("run", metavar="RUN", help="run folder")
    report.add_argument("--out", metavar="PATH", help="where to write it (default: <run>/report.html)")
    report.set_defaults(handler=_report)

    runs = subparsers.add_parser("runs", help="list runs or compare them side by side")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = runs_sub.add_parser("list", help="one line per run under the runs folder")
    runs_dir = OutputConfig.model_fields["runs_dir"].default
    listing.add_argument("--runs-dir", default=runs_dir, metavar="DIR",
                         help=f"folder holding the runs (default: {runs_dir})")
    listing.set_defaults(handler=_list)
    compare = runs_sub.add_parser("compare", help="the given runs side by side")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    compare.set_defaults(handler=_compare)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def format_metrics(result: dict) -> str:
    """The eval result as a small table: one column per model, one row per measurement."""
    from tunesmith.report.results import METRIC_SHORT, fmt, ordered_models
    from tunesmith.report.runs_table import format_table

    models = result.get("models") or {}
    labels = ordered_models(models)
    if "acc" in next(iter(models.values()), {}):
        rows = [[name] + [f"{fmt(models[m][name]['mean'], 4)} [{fmt(models[m][name]['low'], 4)}, "
                          f"{fmt(models[m][name]['high'], 4)}]" for m in labels] for name in ("acc", "acc_norm")]
        return f"{result['n']} questions from {result['source']}\n" + format_table(["metric"] + labels, rows)
    # Key-fact recall (METRIC_SHORT's first) leads: the loss and the other metrics reward the shared wording too.
    # A model kept from an eval older than a metric lacks it and shows "-".
    scores = [[name] + [_interval(models[m]["metrics"].get(key, {})) for m in labels]
              for key, name in METRIC_SHORT.items()]
    rows = scores[:1] + [["test loss"] + [fmt(models[m]["loss"], 4) for m in labels],
                         ["perplexity"] + [fmt(models[m]["perplexity"]) for m in labels]] + scores[1:]
    for category in ("empty", "length", "repetitive"):
        rows.append([f"{category} %"] + [f"{100 * models[m]['errors'][category]:.1f}" for m in labels])
    return (f"{result['n']} examples from {result['source']} (metrics 0-100, 95% intervals)\n"
            + format_table(["metric"] + labels, rows))


def _interval(stats: dict) -> str:
    from tunesmith.report.results import fmt

    return f"{fmt(stats.get('mean'))} [{fmt(stats.get('low'))}, {fmt(stats.get('high'))}]"


def _eval(args: argparse.Namespace) -> int:
    from tunesmith import api

    result = api.evaluate_run(args.target, model=args.model, data=args.data, limit=args.limit, mc=args.mc,
                              max_new_tokens=args.max_new_tokens, out=args.out)
    print(format_metrics(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    from tunesmith import api

    print(f"report: {api.build_report(args.run, args.out)}")
    return 0


def _print_table(header: list[str], rows: list[list[str]], empty: str) -> None:
    from tunesmith.report.runs_table import format_table

    print(format_table(header, rows) if rows else empty)


def _list(args: argparse.Namespace) -> int:
    from tunesmith import api

    _print_table(*api.list_runs(args.runs_dir), empty=f"no runs in {args.runs_dir}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tunesmith import api

    _print_table(*api.compare_runs(args.runs), empty="no runs given")
    return 0
