"""`tunesmith plan CONFIG [--gpus N] [--gpu-memory 80GB] [--nodes M] [--cpu]`: memory per device of each way to
train the config, whether it fits, and the smallest setup that does (from the model's config; no weights)."""

from __future__ import annotations

import argparse

from tunesmith.cli import add_config_arguments


def register(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan", help="memory per GPU of full / LoRA / QLoRA training under DDP and FSDP, and what fits",
        description="Estimate the memory each device needs to train the config: weights, gradients, optimizer "
                    "state and activations at the configured batch_size and max_length, with and without "
                    "activation checkpointing, for full finetuning, LoRA and QLoRA under DDP and FSDP; say which "
                    "fit and the smallest setup that does. Reads the model's config only, never its weights.")
    add_config_arguments(plan, config_required=True)
    plan.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs per machine (default: 1)")
    plan.add_argument("--nodes", type=int, default=1, metavar="M", help="machines (default: 1)")
    plan.add_argument("--gpu-memory", default=None, metavar="SIZE",
                      help="memory of each GPU, e.g. 80GB, 24GB (GB = 2^30 bytes; default: 80GB, or this "
                           "machine's RAM with --cpu)")
    plan.add_argument("--cpu", action="store_true",
                      help="plan CPU processes instead of GPUs (--gpus then counts processes)")
    plan.set_defaults(handler=_plan)


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f}"


def plan_lines(plan) -> list[str]:
    """The plan as a table, one line per setup, then the smallest setup per method."""
    device = "CPU process" if plan.work.device == "cpu" else "GPU"
    work, shape = plan.work, plan.shape
    lines = [f"model: {shape.total_params / 1e6:,.0f}M parameters, {shape.num_layers} layers, hidden "
             f"{shape.hidden_size}; micro-batch of {work.batch_size} examples, {work.tokens} tokens (max_length "
             f"{work.max_length}), {work.precision}, "
             f"{work.optimizer}; {plan.processes} {device}{'s' if plan.processes > 1 else ''} of "
             f"{gib(plan.device_bytes)} GiB", "",
             f"GiB per {device}   weights  grads  optim  activ  runtime  total  fits"]
    for e in plan.estimates:
        s = e.setup
        name = f"{s.method:<5} {s.strategy:<4} {'ckpt' if s.checkpointing else '    '}"
        lines.append(f"{name:<17}{gib(e.weights):>8}{gib(e.gradients):>7}{gib(e.optimizer):>7}"
                     f"{gib(e.activations):>7}{gib(e.runtime):>9}{gib(e.total):>7}  "
                     f"{'yes' if plan.fits(e) else 'no'}")
    lines += ["", "ckpt: activation checkpointing (training.gradient_checkpointing). Gradients freed at each step "
                  "reuse the activations' memory:", "the total counts the larger of the two.", "",
              "smallest setup that fits:"]
    for method, e in plan.smallest.items():
        if e is None:
            plural = "s" if plan.processes > 1 else ""
            lines.append(f"  {method:<5}  none on up to {plan.processes} {device}{plural} of {gib(plan.device_bytes)} GiB")
        else:
            processes = "1 process" if e.setup.processes == 1 else f"{e.setup.processes} processes"
            where = f"{e.setup.processes} {device}{'s' if e.setup.processes > 1 else ''}" if device == "GPU" \
                else processes
            how = ("" if e.setup.processes == 1 and e.setup.strategy == "ddp" else f" {e.setup.strategy.upper()}")
            ckpt = " with activation checkpointing" if e.setup.checkpointing else ""
            lines.append(f"  {method:<5}  {where}{how}{ckpt}: {gib(e.total)} GiB each")
    return lines


def _plan(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.train.plan import parse_memory

    memory = parse_memory(args.gpu_memory) if args.gpu_memory is not None else None
    plan = api.plan_training(args.config, args.overrides, gpus=args.gpus, nodes=args.nodes, device_memory=memory,
                             device="cpu" if args.cpu else "cuda")
    print("\n".join(plan_lines(plan)))
    return 0
