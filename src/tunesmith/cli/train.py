"""`tunesmith train CONFIG [--set k=v] [--resume] [--nproc N]`: prepare (or reuse) the data, then train."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tunesmith.cli import add_config_arguments


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="prepare the data (or reuse it) and finetune the model (full or LoRA)",
        description="Train the config's model on its data: full finetuning or LoRA, with checkpoints, test loss "
                    "and a loss plot in the run folder. Several processes: --nproc N trains data parallel (DDP), "
                    "each process with a full copy of the model.")
    add_config_arguments(train, config_required=True)
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint (same data order, optimizer and RNG state)")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train with N processes on this machine (data parallel; gloo on CPU, NCCL on GPUs)")
    train.set_defaults(handler=_train)


def print_notes(prepared) -> None:
    """The preparation's warnings (skipped records, a stripped template), before training starts; rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        for line in prepared.notes():
            print(line, file=sys.stderr, flush=True)


def _relaunch(args: argparse.Namespace) -> int:
    """Run this same command in N processes under torchrun, which sets the variables accelerate reads."""
    from tunesmith.config import load_config

    load_config(args.config, args.overrides)  # a config mistake is reported once, not by every process
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "tunesmith", "train", args.config]
    for override in args.overrides:
        command += ["--set", override]
    if args.resume:
        command.append("--resume")
    return subprocess.run(command).returncode


def _train(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.errors import ConfigError

    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: must be >= 1")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    result = api.train_run(args.config, args.overrides, resume=args.resume, on_prepared=print_notes)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result.stopped:
        resume = " ".join(["tunesmith train", args.config, *(f"--set {o}" for o in args.overrides), "--resume"])
        print(f"\nstopped at step {result.steps} on request; the checkpoint is in "
              f"{result.model_dir.parent / 'checkpoints'}\nresume with: {resume}")
        return 0
    summary = result.summary
    print(f"\nmodel:      {result.model_dir}" + (f"\nmerged:     {result.merged_dir}" if result.merged_dir else ""))
    print(f"steps:      {result.steps} in {summary['time_s']:.0f} s ({summary['tokens_per_s']:.0f} tokens/s, "
          f"{summary['precision']})")
    if result.final_test_loss is not None:
        best = (f" (model from step {summary['model_step']}, best test loss {result.best_test_loss:.4f})"
                if summary["model_step"] != result.steps else "")
        print(f"test loss:  {result.final_test_loss:.4f}{best}")
    return 0
