"""Acceptance check of `training.time_budget`: a budgeted `tunesmith train` on the shipped example ends within 5%
of its budget with the learning-rate schedule completed.

    .venv/bin/python bench/time_budget_check.py                 # 10m, as the acceptance asks (quiet machine)
    .venv/bin/python bench/time_budget_check.py --budget 2m     # a quicker look

Prints the decision (steps, epochs, the timed step), the training time against the budget, and the last step's
learning rate against the peak; exits 1 when the time misses by more than `--tolerance` or the schedule did not
end. Training time is `train_summary.json`'s `time_s`: the steps and their test-loss evaluations, without
loading the model before or saving it after. Run it on a machine doing nothing else: other work slows the steps
after they were timed, and the run then overshoots.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tunesmith.config.schema import duration_seconds

ROOT = Path(__file__).resolve().parents[1]
TUNESMITH = Path(sys.executable).with_name("tunesmith")


def check(summary: dict, metrics: list[dict], budget_s: float, tolerance: float) -> list[str]:
    """The acceptance's failures for a finished run (empty when it passes)."""
    failures = []
    if "time_budget" not in summary:
        failures.append("train_summary.json has no time_budget: the budget was not applied")
    if summary["steps"] != summary["total_steps"]:
        failures.append(f"ran {summary['steps']} of {summary['total_steps']} steps")
    last = [line for line in metrics if "lr" in line][-1]
    if last["lr"] > 0.05 * summary["learning_rate"]:
        failures.append(f"the last step's learning rate {last['lr']:.2e} is not near the end of the schedule")
    miss = summary["time_s"] / budget_s - 1
    if abs(miss) > tolerance:
        failures.append(f"training took {summary['time_s']:.0f} s for a {budget_s:.0f} s budget ({miss:+.1%})")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "demo.yaml"))
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--runs", default=None, help="runs folder (default: a temporary one)")
    args = parser.parse_args()
    budget_s = duration_seconds(args.budget)
    runs = Path(args.runs or tempfile.mkdtemp(prefix="time-budget-"))
    subprocess.run([str(TUNESMITH), "train", args.config, "--set", f"training.time_budget={args.budget}",
                    "--set", f"output.runs_dir={runs}", "--set", "output.name=time-budget"], check=True)
    run = runs / "time-budget"
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    decided = summary.get("time_budget", {})
    print(f"\nbudget {budget_s:.0f} s -> {decided.get('why', 'no decision')}")
    print(f"trained {summary['steps']}/{summary['total_steps']} steps ({summary['epochs']} epochs) in "
          f"{summary['time_s']:.1f} s ({summary['time_s'] / budget_s - 1:+.1%} of the budget), "
          f"{summary['tokens_per_s']:.0f} tokens/s")
    failures = check(summary, metrics, budget_s, args.tolerance)
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
