"""Data at scale: prepare records/s and peak RSS, and the peak RSS of the first training steps, at 10k/100k/1M.

Builds synthetic question/answer records of about 100 tokens each (SmolLM2 tokenizer and its chat template),
prepares each size in a fresh process and trains 5 steps on it in another (a two-layer model of the real
tokenizer's vocabulary: the point is the memory the data costs, not the model). Each child reports its own peak RSS
(`ru_maxrss`), so the figures do not mix.

Acceptance (issue 16): training peak RSS at 1M within +10% of 10k; prepare of 1M under 2 GiB peak RSS and at least
5,000 records/s on two cores.

    .venv/bin/python bench/data_scale.py                     # 10k, 100k, 1M (about 5 minutes on an idle 2-core box)
    .venv/bin/python bench/data_scale.py --sizes 10000 100000
    .venv/bin/python bench/data_scale.py --steps-only data   # the trainer's data path without the model
    .venv/bin/python bench/data_scale.py --sizes 1000000 --steps-only data --workers 1   # one tokenizing process
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("kettle toaster mixer blender grinder oven lamp scale fan heater frother boiler cooker steamer press "
         "green heavy quiet fast small large bright warm cold silver copper black white old new cheap dear "
         "makes runs holds weighs costs cleans heats cools grinds brews lights turns sells ships fits").split()


def build_file(path: Path, count: int, seed: int = 0) -> None:
    """`count` question/answer lines of about 100 SmolLM2 tokens each (60 question words, 35 answer words)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            question = f"Record {i}: " + " ".join(rng.choices(WORDS, k=55)) + "?"
            answer = " ".join(rng.choices(WORDS, k=32)) + "."
            f.write(json.dumps({"question": question, "answer": answer}) + "\n")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_prepare(data: str, runs: str, model: str, workers: str, template: str) -> dict:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as `tunesmith data prepare` runs (the CLI's quiet_libraries)
    from tunesmith.config import load_config
    from tunesmith.prepare import spool
    from tunesmith.prepare.pipeline import prepare
    from tunesmith.runs import create_run

    spool.SPOOL_WORKERS = int(workers) or None  # 0: as prepare decides (spool.spool_workers)

    config = load_config(None, [f"data.path={data}", f"model.name={model}", f"output.runs_dir={runs}",
                                "output.name=scale", f"template.name={template}", "split.test_size=0.01"])
    start, cpu = time.perf_counter(), time.process_time()
    result = prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                     config.split)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes (--workers), reaped by now
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu + children.ru_utime + children.ru_stime
    m = result.manifest
    return {"records": m.counts.records, "seconds": round(seconds, 1),
            "records_per_s": round(m.counts.records / seconds),
            "cpu_s": round(cpu, 1), "records_per_cpu_s": round(m.counts.records / cpu),
            "train_tokens": m.tokens["train"].total, "peak_rss_mib": round(_peak_rss_mib()),
            "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def child_train(runs: str, model: str, mode: str) -> dict:
    from tunesmith.config import load_config
    from tunesmith.runs import RunPaths

    config = load_config(None, [f"model.name={model}", f"output.runs_dir={runs}", "output.name=scale",
                                "training.max_steps=5", "training.batch_size=8", "training.method=full",
                                "training.precision=fp32"])
    paths = RunPaths(Path(runs) / "scale")
    start = time.perf_counter()
    if mode == "data":
        from tunesmith.modeling.batches import make_batch
        from tunesmith.train.loop import load_data
        from tunesmith.train.schedule import step_examples

        data = load_data(paths, 1)
        for step in range(5):
            for part in step_examples(step, len(data.train), config.training):
                make_batch([data.train[i] for i in part], True, data.max_row_tokens, 2)
    else:
        from tunesmith.train.loop import train

        train(paths, config.model, config.training, config.template)
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(_peak_rss_mib())}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_model(folder: Path) -> str:
    """The tests' tiny model: two Llama layers with the real SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.models import EMBEDDED_MODELS, embedded_gguf

    gguf = embedded_gguf(next(iter(EMBEDDED_MODELS)))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                 tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                 pad_token_id=2)).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps-only", choices=["train", "data"], default="train",
                        help="train: 5 real steps of the tiny model; data: the trainer's data path alone")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that render and tokenize in prepare (tunesmith.prepare.spool.SPOOL_WORKERS); "
                             "0: as prepare decides (one per core from 20,000 records)")
    parser.add_argument("--template", default="auto",
                        help="template.name: auto (the tokenizer's chat template, the default) or qa, alpaca, ...")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps(child_prepare(*rest) if kind == "prepare" else child_train(*rest)))
        return
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model")
        rows = []
        for size in args.sizes:
            data, runs = tmp / f"qa-{size}.jsonl", tmp / f"runs-{size}"
            build_file(data, size)
            prepared = run_child("prepare", str(data), str(runs), model, str(args.workers), args.template)
            trained = run_child("train", str(runs), model, args.steps_only)
            rows.append({"size": size, "prepare": prepared, "train": trained})
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{size:>9,} records (load {load}): prepare {prepared['records_per_s']:>7,} records/s "
                  f"({prepared['seconds']} s wall, {prepared['cpu_s']} s CPU = {prepared['records_per_cpu_s']:,} "
                  f"records per CPU-second, {prepared['train_tokens']:,} train tokens), "
                  f"prepare peak RSS {prepared['peak_rss_mib']:,} MiB (largest worker process "
                  f"{prepared['worker_peak_rss_mib']:,} MiB); "
                  f"first 5 steps ({args.steps_only}) peak RSS {trained['peak_rss_mib']:,} MiB", flush=True)
        base = rows[0]["train"]["peak_rss_mib"]
        for row in rows[1:]:
            print(f"training peak RSS at {row['size']:,} vs {rows[0]['size']:,}: "
                  f"{row['train']['peak_rss_mib'] / base - 1:+.1%}")


if __name__ == "__main__":
    main()
