"""`tunesmith plan` against the peak RSS of real training steps: the 135M model, CPU, one process.

    .venv/bin/python bench/plan_check.py [--config examples/demo.yaml] [--steps 3] [--methods full,lora]

For each method the plan's "ddp" row (one process; checkpointing as configured) is printed beside the peak RSS
of `tunesmith train` running that many steps in a fresh child process (its own `ru_maxrss`: imports, data,
model, steps and the final test loss). The model is resolved once before (the embedded GGUF is converted on
first use, which would otherwise be measured). The target is |predicted / measured - 1| <= 15%.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunesmith import api  # noqa: E402
from tunesmith.config import load_config  # noqa: E402
from tunesmith.models import resolve_model_path  # noqa: E402

CHILD = ("import resource, sys\nfrom tunesmith.cli import main\ncode = main(sys.argv[1:])\n"
         "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(code)\n")


def measured_peak_bytes(config: str, overrides: list[str]) -> int:
    """Peak RSS of `tunesmith train CONFIG --set ...` in a fresh process."""
    command = [sys.executable, "-c", CHILD, "train", config]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("PEAK_KIB"))
    return int(line.split()[1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", default="full,lora")
    args = parser.parse_args()
    resolve_model_path(load_config(args.config).model.name)
    print(f"{'method':<8}{'predicted GiB':>14}{'measured GiB':>14}{'ratio':>8}   parts (weights/grads/optim/activ)")
    with tempfile.TemporaryDirectory() as runs:
        for method in args.methods.split(","):
            overrides = [f"training.method={method}", f"training.max_steps={args.steps}",
                         "training.eval_every_steps=null", f"output.runs_dir={runs}", f"output.name={method}"]
            plan = api.plan_training(args.config, overrides, device="cpu")
            row = next(e for e in plan.estimates if e.setup.method == method and e.setup.strategy == "ddp"
                       and e.setup.checkpointing == load_config(args.config, overrides).training.gradient_checkpointing)
            measured = measured_peak_bytes(args.config, overrides)
            parts = "/".join(f"{n / 2 ** 30:.2f}" for n in (row.weights, row.gradients, row.optimizer, row.activations))
            print(f"{method:<8}{row.total / 2 ** 30:>14.2f}{measured / 2 ** 30:>14.2f}{row.total / measured:>8.2f}   "
                  f"{parts} (+{row.runtime / 2 ** 30:.2f} runtime)", flush=True)


if __name__ == "__main__":
    main()
