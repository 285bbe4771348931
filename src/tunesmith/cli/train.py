"""`tunesmith train CONFIG [--set k=v] [--resume] [--nproc N] [--nnodes N --node-rank R --master-addr HOST]`:
prepare (or reuse) the data, then train, in one process or relaunched under torchrun."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tunesmith.cli import add_config_arguments

DEFAULT_MASTER_PORT = 29500
"""torchrun's own default rendezvous port."""


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="prepare the data (or reuse it) and finetune the model (full or LoRA)",
        description="Train the config's model on its data: full finetuning or LoRA, with checkpoints, test loss "
                    "and a loss plot in the run folder. Several processes: --nproc N trains data parallel, either "
                    "DDP (each process with a full copy of the model) or, with training.distributed=fsdp, "
                    "PyTorch FSDP2 (weights, gradients and optimizer state sharded across the processes; "
                    "sharded checkpoints; the final model saved whole); training.distributed=auto picks fsdp "
                    "when one copy would not fit. Several machines: run the same command on each "
                    "with --nnodes, its own --node-rank and the first machine's --master-addr.")
    add_config_arguments(train, config_required=True)
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint (same data order, optimizer and RNG state)")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train with N processes on this machine (data parallel; gloo on CPU, NCCL on GPUs)")
    train.add_argument("--nnodes", type=int, default=1, metavar="N",
                       help="machines taking part; run this command on each (total processes: nnodes x nproc)")
    train.add_argument("--node-rank", type=int, default=None, metavar="R",
                       help="this machine's place among the --nnodes machines, 0 to N-1 (0 writes the run's files)")
    train.add_argument("--master-addr", default=None, metavar="HOST",
                       help="address of the machine with --node-rank 0, reachable from every machine")
    train.add_argument("--master-port", type=int, default=None, metavar="P",
                       help=f"free TCP port on that machine for the rendezvous (default: {DEFAULT_MASTER_PORT})")
    train.set_defaults(handler=_train)


def print_notes(prepared) -> None:
    """The preparation's warnings (skipped records, a stripped template), before training starts; rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        for line in prepared.notes():
            print(line, file=sys.stderr, flush=True)


def launch_options(nproc: int, nnodes: int, node_rank: int | None, master_addr: str | None,
                   master_port: int | None) -> list[str]:
    """torchrun's options for `nproc` processes on each of `nnodes` machines: `--standalone` on one machine,
    a static rendezvous at `master_addr:master_port` across several (every machine runs the same command with
    its own `node_rank`; torchrun numbers the processes node_rank x nproc + local rank).

    >>> launch_options(2, 1, None, None, None)
    ['--standalone', '--nproc_per_node=2']
    >>> launch_options(1, 2, 1, "10.0.0.1", 29501)
    ['--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1', '--master_port=29501', '--nproc_per_node=1']

    Raises:
        ConfigError: a value out of range, or a multi-machine flag without --nnodes > 1, naming the flag.
    """
    from tunesmith.errors import ConfigError

    problems = []
    if nproc < 1:
        problems.append(f"--nproc {nproc}: must be >= 1")
    if nnodes < 1:
        problems.append(f"--nnodes {nnodes}: must be >= 1")
    if master_port is not None and not 1 <= master_port <= 65535:
        problems.append(f"--master-port {master_port}: must be a TCP port, 1 to 65535")
    if nnodes == 1:
        given = [flag for flag, value in (("--node-rank", node_rank), ("--master-addr", master_addr),
                                          ("--master-port", master_port)) if value is not None]
        if given:
            problems.append(f"{', '.join(given)}: only with --nnodes > 1 (one machine needs no rendezvous address)")
    else:
        if node_rank is None:
            problems.append(f"--nnodes {nnodes} needs --node-rank: this machine's number, 0 to {nnodes - 1}")
        elif not 0 <= node_rank < nnodes:
            problems.append(f"--node-rank {node_rank}: must be 0 to {nnodes - 1} with --nnodes {nnodes}")
        if not master_addr or not master_addr.strip():
            problems.append(f"--nnodes {nnodes} needs --master-addr: the address of the machine with --node-rank 0")
    if problems:
        raise ConfigError("; ".join(problems))
    if nnodes == 1:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    return [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr.strip()}",
            f"--master_port={master_port or DEFAULT_MASTER_PORT}", f"--nproc_per_node={nproc}"]


def _relaunch(args: argparse.Namespace, options: list[str]) -> int:
    """Run this same command under torchrun (with `options`), which sets the variables accelerate reads."""
    from tunesmith.config import load_config

    load_config(args.config, args.overrides)  # a config mistake is reported once, not by every process
    command = [sys.executable, "-m", "torch.distributed.run", *options, "-m", "tunesmith", "train", args.config]
    for override in args.overrides:
        command += ["--set", override]
    if args.resume:
        command.append("--resume")
    return subprocess.run(command).returncode


def _train(args: argparse.Namespace) -> int:
    from tunesmith import api

    options = launch_options(args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port)
    if (args.nproc > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        return _relaunch(args, options)
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
    if "time_budget" in summary:
        print(f"budget:     {summary['time_budget']['why']}")
    if result.final_test_loss is not None:
        best = (f" (model from step {summary['model_step']}, best test loss {result.best_test_loss:.4f})"
                if summary["model_step"] != result.steps else "")
        print(f"test loss:  {result.final_test_loss:.4f}{best}")
    return 0
