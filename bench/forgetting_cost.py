"""What the demo's forgetting panel costs: scoring the shipped multiple-choice file with each model of a run.

    .venv/bin/python bench/forgetting_cost.py                 # the embedded SmolLM2-135M-Instruct, as base
    .venv/bin/python bench/forgetting_cost.py --run runs/demo # base and finetuned of a trained run

For each model: load it as `tunesmith eval` does, score `examples/general_knowledge_mc.jsonl` with
`tunesmith.evaluate.choices.score_choices` (what `eval.benchmarks` runs), and print acc, acc_norm, the scoring's
wall and CPU seconds and questions per second (model load excluded: `tunesmith eval` has the model loaded already
for the test set). CPU seconds survive a loaded machine better than wall seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "general_knowledge_mc.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a trained run folder (default: the embedded model, base only)")
    parser.add_argument("--file", default=str(SHIPPED), help="multiple-choice file (default: the shipped one)")
    parser.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (default: auto, as eval)")
    args = parser.parse_args()

    from tunesmith.data.choices import load_choice_items
    from tunesmith.evaluate.choices import score_choices
    from tunesmith.use.generation import load_for_inference

    items = load_choice_items(args.file)
    target, labels = (args.run, ["base", "finetuned"]) if args.run else ("smollm2-135m-instruct", ["finetuned"])
    total_wall = total_cpu = 0.0
    for label in labels:
        generator = load_for_inference(target, label, precision=args.precision)
        wall, cpu = time.perf_counter(), time.process_time()
        scores = score_choices(generator.model, generator.tokenizer, items, 1000, 0, False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        name = label if args.run else "base"
        print(f"{name:>9}: acc {scores['acc']['mean']:.3f}  acc_norm {scores['acc_norm']['mean']:.3f}  "
              f"{len(items)} questions in {wall:.1f} s wall, {cpu:.1f} s CPU ({len(items) / wall:.1f} q/s)")
    print(f"    total: {total_wall:.1f} s wall, {total_cpu:.1f} s CPU for {len(labels)} model(s)")


if __name__ == "__main__":
    main()
