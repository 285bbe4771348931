"""Recipe search for `tunesmith demo`: train one named recipe, evaluate it, print and record the figures.

Each recipe is a list of `--set` overrides on examples/demo.yaml (or on `--config`). A run goes to
`<runs>/<name>`; its line (training tokens and steps, train time, eval time, the finetuned model's key-fact recall,
normalized exact match, ROUGE-L and test loss) is appended to `<runs>/recipes.jsonl`, so the table in
bench/README.md can be rebuilt from it. Training tokens are the figure that survives a loaded machine: divide by
the quiet tokens/s (about 140 full / 190 LoRA in fp32 on 2 cores) for the time it would take.

    .venv/bin/python bench/recipes.py --runs /tmp/recipes/runs full-lr3e-4-e2 \\
        --set training.learning_rate=3e-4 --set training.epochs=2

Run one at a time: two runs at once halve each other's speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNESMITH = Path(sys.executable).with_name("tunesmith")


def run_recipe(config: Path, runs: Path, name: str, overrides: list[str], compare_base: bool) -> dict:
    """Train and evaluate one recipe with `tunesmith run`; returns its line of figures."""
    sets = [f"output.runs_dir={runs}", f"output.name={name}", f"eval.compare_base={str(compare_base).lower()}",
            *overrides]
    command = [str(TUNESMITH), "run", str(config), *[arg for s in sets for arg in ("--set", s)]]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall_s = time.perf_counter() - started
    return recipe_line(runs / name, name, overrides, wall_s)


def recipe_line(run_dir: Path, name: str, overrides: list[str], wall_s: float | None = None) -> dict:
    """The figures of a finished run folder, read from train_summary.json and eval/metrics.json."""
    summary = json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
    means = metrics["models"]["finetuned"]["metrics"]

    def mean(key: str):
        value = means.get(key)
        return value.get("mean") if isinstance(value, dict) else value

    return {"name": name, "overrides": overrides, "steps": summary["steps"], "epochs": summary["epochs"],
            "tokens_seen": summary["tokens_seen"], "train_time_s": summary["train_time_s"],
            "tokens_per_s": summary["tokens_per_s"], "best_step": summary["best_step"],
            "test_loss": summary["final_test_loss"], "key_fact_recall": mean("key_fact_recall"),
            "exact_match_normalized": mean("exact_match_normalized"), "rouge_l": mean("rouge_l"),
            "wall_s": None if wall_s is None else round(wall_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="run name (a folder under --runs)")
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "demo.yaml")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/recipes/runs"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--compare-base", action="store_true", help="also evaluate the base model")
    parser.add_argument("--read-only", action="store_true", help="only read an existing run folder's figures")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.read_only:
        line = recipe_line(args.runs / args.name, args.name, args.overrides)
    else:
        line = run_recipe(args.config.resolve(), args.runs, args.name, args.overrides, args.compare_base)
    with (args.runs / "recipes.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    print(json.dumps(line, indent=1))


if __name__ == "__main__":
    main()
