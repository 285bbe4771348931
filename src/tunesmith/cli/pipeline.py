"""`tunesmith config show`, `tunesmith run CONFIG` and `tunesmith demo`: whole-pipeline commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunesmith.cli import add_config_arguments


def register(subparsers) -> None:
    config = subparsers.add_parser("config", help="validate a config and show it with every key and default")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML (all keys with their defaults)")
    add_config_arguments(show)
    show.set_defaults(handler=_show)

    run = subparsers.add_parser("run", help="prepare -> train -> evaluate -> report, as one pipeline")
    add_config_arguments(run, config_required=True)
    run.add_argument("--resume", action="store_true", help="continue training from the latest checkpoint")
    run.set_defaults(handler=_run)

    demo = subparsers.add_parser(
        "demo", help="finetune the embedded default model on the shipped example and write the report",
        description="Runs examples/demo.yaml end to end: prepare, train, evaluate base vs finetuned, report.")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a value of the demo config (repeatable)")
    demo.set_defaults(handler=_demo)


def _show(args: argparse.Namespace) -> int:
    from tunesmith import api

    print(api.show_config(args.config, args.overrides), end="")
    return 0


def _print_pipeline(result) -> None:
    rows = [("run folder", str(result.run)), ("model", str(result.model)), ("report", str(result.report))]
    scores = [(name, f"base {'n/a' if base is None else f'{base:.1f}'} -> finetuned {tuned:.1f}  (0-100)")
              for name, (base, tuned) in result.headline_metrics.items()]
    # The first headline metric (key-fact recall) leads: loss and wording metrics rise with the house style alone.
    rows += scores[:1]
    if result.base_test_loss is not None:
        rows.append(("test loss", f"base {result.base_test_loss:.4f} -> finetuned {result.test_loss:.4f}"))
    rows += scores[1:]
    models = result.metrics.get("models") or {}
    if "judge" in models.get("finetuned", {}):
        shares = [models.get(m, {}).get("judge", {}).get("correct") for m in ("base", "finetuned")]
        rows.append(("judged correct", " -> ".join(f"{m} {'n/a' if v is None else f'{100 * v:.1f}%'}"
                                                   for m, v in zip(("base", "finetuned"), shares))))
    for bench in result.metrics.get("benchmarks") or []:
        kept = {m: bench["models"].get(m, {}).get("acc_norm", {}).get("mean") for m in ("base", "finetuned")}
        if None not in kept.values():
            rows.append((f"kept {Path(bench['source']).name}", f"acc_norm base {kept['base']:.3f} -> finetuned "
                                                               f"{kept['finetuned']:.3f}  (0-1)"))
    width = max(len(label) for label, _ in rows) + 2
    print()
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")


def _run(args: argparse.Namespace) -> int:
    from tunesmith import api

    from tunesmith.cli.train import print_notes

    _print_pipeline(api.run_pipeline(args.config, args.overrides, resume=args.resume, on_prepared=print_notes))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tunesmith import api

    _print_pipeline(api.demo(args.overrides))
    return 0
