"""Training throughput: tunesmith vs TRL `SFTTrainer`, same model, data, masking, batch, lr and steps.

    .venv/bin/python bench/train_throughput.py [--data FILE.jsonl] [--steps 8] [--methods full,lora]

Both trainers run in this one bench run, alternating (tunesmith, TRL, tunesmith, TRL per method), each in a
fresh child process so its peak RSS is its own (imports, model, training; nothing left over from the other), on
the examples tunesmith prepared, in the same order (TRL reads them sequentially in tunesmith's step order), so
both see identical token ids, identical batches and the same response-only masking (TRL gets them pre-tokenized
with a `completion_mask`). Printed per trainer and method: real (non-padding) tokens/s,
loss-bearing tokens/s, padding share, peak RSS, test loss after the steps (computed by the same function for
both), achieved GFLOP/s against the bf16 matmul peak measured in the same run, and tunesmith/TRL ratios.

FLOPs per real token: 6 x parameters for full finetuning; 4 x parameters for LoRA (the frozen base still runs
forward and backward-through-activations, but computes no weight gradients). Attention's own FLOPs are left
out, so the figures slightly understate the work done. TRL runs in fp32 (`bf16=False`): on this CPU that is
its faster setting, so the baseline is TRL at its best, not at its slowest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunesmith.config import load_config  # noqa: E402
from tunesmith.evaluate.run import response_loss  # noqa: E402
from tunesmith.models import load_model, load_tokenizer  # noqa: E402
from tunesmith.modeling.packing import MIN_ROW_TOKENS  # noqa: E402
from tunesmith.prepare.pipeline import load_prepared, prepare  # noqa: E402
from tunesmith.modeling.batches import make_batch  # noqa: E402
from tunesmith.runs import create_run  # noqa: E402
from tunesmith.train.loop import train  # noqa: E402
from tunesmith.train.schedule import step_examples  # noqa: E402


def prepared_run(config):
    """The config's run folder with its data prepared (or reused), as the api prepares it; returns its RunPaths."""
    return prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                   config.split).paths


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of a square matmul in `dtype` on this machine, all threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def step_order(config, steps: int, num_examples: int) -> list[int]:
    """The training examples tunesmith's loop takes, step by step; TRL is given them in this order too."""
    return [i for step in range(steps) for part in step_examples(step, num_examples, config.training) for i in part]


def tunesmith_run(config, steps: int) -> dict:
    """Train `steps` steps with tunesmith's defaults; timing is the training loop's own (model load excluded)."""
    paths = prepared_run(config)
    train_set, _, manifest = load_prepared(paths)
    examples = [{"input_ids": i, "labels": l} for i, l in zip(train_set["input_ids"], train_set["labels"])]
    max_row = max(MIN_ROW_TOKENS, manifest.max_length, max(len(e["input_ids"]) for e in examples))
    positions = 0
    for step in range(steps):
        for part in step_examples(step, len(examples), config.training):
            batch = make_batch([examples[i] for i in part], config.training.packing, max_row, 0)
            positions += batch["input_ids"].numel()
    result = train(paths, config.model, config.training, config.template)
    s = result.summary
    return {"real_tokens": s["tokens_seen"], "loss_tokens": s["loss_tokens"], "positions": positions,
            "seconds": s["train_time_s"], "model": result.model, "precision": s["precision"]}


class CountingCollator:
    """Wraps TRL's collator to count the real and padded positions it hands the model."""

    def __init__(self, inner):
        self.inner, self.real, self.positions, self.loss = inner, 0, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.positions += batch["input_ids"].numel()
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        self.loss += int((batch["labels"][:, 1:] != -100).sum())
        return batch


def trl_run(config, steps: int, workdir: str) -> dict:
    """Train `steps` steps with TRL SFTTrainer on the same tokenized examples, masking and batches.

    TRL's defaults except `bf16=False` (its faster setting here) and a sequential sampler over the examples in
    tunesmith's step order, so both trainers see the same batches and their test losses compare precision and
    numerics, not luck of the draw. Its default gradient checkpointing stays on.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    paths = prepared_run(config)
    train_set, _, _ = load_prepared(paths)
    order = step_order(config, steps, len(train_set))
    data = Dataset.from_dict({
        "input_ids": [train_set["input_ids"][i] for i in order],
        "completion_mask": [[int(l != -100) for l in train_set["labels"][i]] for i in order],
    })
    t = config.training
    args = SFTConfig(output_dir=workdir, max_steps=steps, per_device_train_batch_size=t.batch_size,
                     gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
                     lr_scheduler_type="linear", warmup_steps=0, weight_decay=t.weight_decay,
                     max_grad_norm=t.max_grad_norm, seed=t.seed, bf16=False, fp16=False, use_cpu=True,
                     logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
                     max_length=config.tokenization.max_length, completion_only_loss=True,
                     train_sampling_strategy="sequential", dataloader_num_workers=0, disable_tqdm=True)
    model = load_model(config.model, dtype=torch.float32)
    peft_config = None
    if t.method == "lora":
        peft_config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=load_tokenizer(config.model),
                         peft_config=peft_config)
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"real_tokens": counter.real, "loss_tokens": counter.loss, "positions": counter.positions,
            "seconds": seconds, "model": trainer.model, "precision": "fp32"}


def bench_config(args, method: str, workdir: str):
    lr = 2e-5 if method == "full" else 2e-4
    return load_config(None, [
        f"model.name={args.model}", f"data.path={args.data}", f"training.method={method}",
        f"training.max_steps={args.steps}", f"training.batch_size={args.batch_size}",
        f"training.learning_rate={lr}", "training.lr_scheduler=linear", "training.warmup_steps=0",
        f"tokenization.max_length={args.max_length}", "split.test_size=40",
        f"output.runs_dir={workdir}", f"output.name=bench-{method}"])


def child(args) -> None:
    """One trainer, one method, in this fresh process; prints its figures as one JSON line."""
    config = bench_config(args, args.method, args.workdir)
    run = tunesmith_run(config, args.steps) if args.child == "tunesmith" else \
        trl_run(config, args.steps, f"{args.workdir}/trl-{args.method}")
    _, test_set, _ = load_prepared(prepared_run(config))
    examples = [{"input_ids": i, "labels": l} for i, l in zip(test_set["input_ids"], test_set["labels"])]
    model = run.pop("model")
    model.eval()
    run["test_loss"] = response_loss(model, examples, 0, progress=False)["loss"]
    run["peak_rss"] = peak_rss_bytes()
    print(json.dumps(run))


def run_child(args, name: str, method: str, workdir: str) -> dict:
    command = [sys.executable, __file__, "--child", name, "--method", method, "--workdir", workdir,
               "--data", args.data, "--model", args.model, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=os.environ)
    if done.returncode:
        sys.exit(f"{name} {method} run failed (exit {done.returncode}); rerun it alone: {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_line(name: str, r: dict, flops_per_token: float, peak_bf16: float) -> str:
    gflops = flops_per_token * r["real_tokens"] / r["seconds"] / 1e9
    return (f"{name:<10} {r['real_tokens'] / r['seconds']:>9.1f} {r['loss_tokens'] / r['seconds']:>9.1f} "
            f"{1 - r['real_tokens'] / r['positions']:>8.1%} {r['peak_rss'] / 2**30:>8.2f} {r['test_loss']:>9.4f} "
            f"{gflops:>8.1f} {gflops / peak_bf16:>8.1%} {r['precision']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "examples" / "larkspur_support.jsonl"),
                        help="any JSONL in a shape tunesmith reads (default: the shipped example)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of tunesmith and TRL per method")
    parser.add_argument("--child", choices=["tunesmith", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TUNESMITH_HOME", str(Path.home() / ".cache" / "tunesmith"))
    if args.child:
        return child(args)

    peak_bf16, peak_fp32 = matmul_peak_gflops(torch.bfloat16), matmul_peak_gflops(torch.float32)
    print(f"matmul peak on this machine: bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s, "
          f"{torch.get_num_threads()} threads")
    workdir = tempfile.mkdtemp(prefix="tunesmith-bench-")
    for method in args.methods.split(","):
        config = bench_config(args, method, workdir)
        prepared_run(config)  # once, here, so no child's time or memory includes it
        params = sum(p.numel() for p in load_model(config.model).parameters())
        flops_per_token = (6 if method == "full" else 4) * params
        results: dict[str, list[dict]] = {"tunesmith": [], "trl": []}
        for _ in range(args.rounds):
            for name in ("tunesmith", "trl"):
                results[name].append(run_child(args, name, method, workdir))
        best = {name: max(runs, key=lambda r: r["real_tokens"] / r["seconds"]) for name, runs in results.items()}
        print(f"\n== {method} finetuning, {args.steps} steps, batch {args.batch_size}, max_length {args.max_length}, "
              f"{params / 1e6:.0f}M parameters, {flops_per_token / params:.0f} FLOPs/param/token")
        print(f"{'trainer':<10} {'real t/s':>9} {'loss t/s':>9} {'padding':>8} {'RSS GiB':>8} {'test loss':>9} "
              f"{'GFLOP/s':>8} {'of bf16':>8} {'prec':>6}")
        for name, run in best.items():
            print(report_line(name, run, flops_per_token, peak_bf16))
        ts, trl = best["tunesmith"], best["trl"]
        print(f"tunesmith/TRL: real tokens/s x{(ts['real_tokens'] / ts['seconds']) / (trl['real_tokens'] / trl['seconds']):.2f}, "
              f"peak RSS x{ts['peak_rss'] / trl['peak_rss']:.2f}, "
              f"test loss {ts['test_loss'] / trl['test_loss'] - 1:+.2%}", flush=True)


if __name__ == "__main__":
    main()
