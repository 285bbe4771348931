"""Per-process peak memory of full finetuning under FSDP vs DDP: 2 processes each, on this machine's CPU (gloo).

    .venv/bin/python bench/distributed_memory.py [--model smollm2-135m-instruct] [--steps 3] [--batch-size 2]

Each setting runs `tunesmith train` in 2 processes under torchrun (as `--nproc 2` does), full finetuning in fp32
of the default model for a few steps, and every process reports its peak resident memory (ru_maxrss: imports,
model load, training, the final save). DDP keeps in each process the whole fp32 weights, gradients (and DDP's
gradient buckets) and both AdamW moments; FSDP keeps half of each, plus the one layer gathered at a time and the
root (embeddings, tied output layer) while it runs. Printed: each rank's peak, the mean, and FSDP/DDP; the target
is <= 0.65. Peak RSS hardly depends on how loaded the CPU is, so this runs on a busy machine too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.65


def child(args) -> None:
    """One process of a 2-process run: train, then write this rank's peak RSS."""
    sys.path.insert(0, str(ROOT / "src"))
    from tunesmith import api
    from tunesmith.config import load_config

    config = load_config(None, [
        f"model.name={args.model}", f"data.path={args.data}", "training.method=full", "training.precision=fp32",
        f"training.max_steps={args.steps}", f"training.batch_size={args.batch_size}", "split.test_size=2",
        f"training.distributed={args.distributed}", f"output.runs_dir={args.workdir}",
        f"output.name={args.distributed}"])
    _, result = api.train_config(config)
    rank = int(os.environ["RANK"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (Path(args.workdir) / f"{args.distributed}-rank{rank}.json").write_text(json.dumps(
        {"peak_rss": peak, "sharded": result.summary["sharded"], "loss": result.final_train_loss}))


def run_setting(args, distributed: str, workdir: str) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "--child", "--distributed", distributed, "--workdir", workdir, "--model", args.model,
               "--data", args.data, "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(f"{distributed} run failed ({done.returncode})")
    return [json.loads((Path(workdir) / f"{distributed}-rank{r}.json").read_text()) for r in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT / "examples" / "larkspur_support.jsonl"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--distributed", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as workdir:
        ranks = {name: run_setting(args, name, workdir) for name in ("ddp", "fsdp")}
    print(f"\nfull finetuning of {args.model}, fp32, 2 processes (gloo), {args.steps} steps of batch "
          f"{args.batch_size} per process")
    mean = {}
    for name, results in ranks.items():
        assert results[0]["sharded"] == (name == "fsdp"), results
        peaks = [r["peak_rss"] / 2**20 for r in results]
        mean[name] = sum(peaks) / len(peaks)
        print(f"{name:5} peak RSS per rank: {', '.join(f'{p:,.0f} MiB' for p in peaks)} (mean {mean[name]:,.0f} MiB); "
              f"final loss {results[0]['loss']:.4f}")
    ratio = mean["fsdp"] / mean["ddp"]
    print(f"FSDP / DDP: {ratio:.3f} (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
