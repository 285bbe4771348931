"""`tunesmith eval`, `tunesmith report`, `tunesmith runs list|compare`: measure, show, compare."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from tunesmith.cli import field_help
    from tunesmith.config import EvalConfig, JudgeConfig, OutputConfig

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
    evaluate.add_argument("--benchmark", dest="benchmarks", action="append", metavar="FILE.jsonl",
                          help=field_help(EvalConfig, "benchmarks", show_default=False)
                          + " (repeatable; default: the run's eval.benchmarks)")
    evaluate.add_argument("--judge-url", metavar="URL",
                          help="grade every answer correct/partly/wrong by an LLM judge at "
                               + field_help(JudgeConfig, "url", show_default=False) + "; default: the run's "
                               "eval.judge; its key from $" + JudgeConfig.model_fields["key_env"].default)
    evaluate.add_argument("--judge-model", metavar="NAME", help=field_help(JudgeConfig, "model"))
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
    for grade in ("correct", "partly", "wrong", "unknown"):
        if any("judge" in models[m] for m in labels):
            rows.append([f"judge: {grade} %"] + [_share(models[m].get("judge", {}).get(grade)) for m in labels])
    text = (f"{result['n']} examples from {result['source']} (metrics 0-100, 95% intervals)\n"
            + format_table(["metric"] + labels, rows))
    return "\n\n".join([text] + [t for t in (judge_note(result), kept_table(result.get("benchmarks") or [])) if t])


def _share(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def judge_note(result: dict) -> str:
    """Which judge graded the answers, and what went wrong with it (refused, unanswered requests)."""
    summaries = [m["judge"] for m in (result.get("models") or {}).values() if "judge" in m]
    if not summaries:
        return ""
    asked, cached = sum(s.get("asked", 0) for s in summaries), sum(s.get("cached", 0) for s in summaries)
    failed = sum(s.get("failed", 0) for s in summaries)
    note = f"judge {summaries[0].get('judge')}: {asked} answers graded, {cached} from the cache"
    note += f", {failed} got no answer (graded unknown)" if failed else ""
    error = next((s["error"] for s in summaries if s.get("error")), None)
    return note + (f"\njudge refused: {error}" if error else "")


def kept_table(benchmarks: list[dict]) -> str:
    """Benchmark accuracy per model (0-1, as lm-evaluation-harness reports it) and finetuned - base with its
    paired 95% interval: what the finetune kept of what the base knew."""
    from tunesmith.report.results import fmt, ordered_models
    from tunesmith.report.runs_table import format_table

    labels = ordered_models({label: None for result in benchmarks for label in result.get("models") or {}})
    rows = []
    for result in benchmarks:
        models = result.get("models") or {}
        for name in ("acc", "acc_norm"):
            change = (result.get("change") or {}).get(name)
            shown = f"{change['mean']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]" if change else "-"
            rows.append([Path(str(result.get("source"))).name, fmt(result.get("n")), name]
                        + [fmt(models.get(m, {}).get(name, {}).get("mean"), 3) for m in labels] + [shown])
    if not rows:
        return ""
    return ("kept: multiple-choice benchmarks (accuracy 0-1)\n"
            + format_table(["benchmark", "questions", "metric"] + labels + ["change [95%]"], rows))


def _interval(stats: dict) -> str:
    from tunesmith.report.results import fmt

    return f"{fmt(stats.get('mean'))} [{fmt(stats.get('low'))}, {fmt(stats.get('high'))}]"


def _eval(args: argparse.Namespace) -> int:
    from tunesmith import api

    result = api.evaluate_run(args.target, model=args.model, data=args.data, limit=args.limit, mc=args.mc,
                              max_new_tokens=args.max_new_tokens, out=args.out, judge_url=args.judge_url,
                              judge_model=args.judge_model, benchmarks=args.benchmarks)
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
