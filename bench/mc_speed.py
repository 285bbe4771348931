"""Multiple-choice scoring: tunesmith against lm-evaluation-harness, same model, same file, fp32.

    .venv/bin/python bench/mc_speed.py                      # 200 questions of bench/make_arc_style.py
    .venv/bin/python bench/mc_speed.py --file arc.jsonl     # any file in ARC's native shape

Each side runs in a fresh child process (imports, model load and scoring are its own), alternating over
`--rounds`, on the embedded SmolLM2-135M-Instruct (converted to safetensors under $TUNESMITH_HOME) in fp32:
- lm-eval: its `HFLM` (dtype float32, `--lm-eval-batch-size`, default 8) and `simple_evaluate` over a task YAML
  written for the file (ARC's `arc_easy` prompt, "Question: {stem}\\nAnswer:", choices as " " + text, acc and
  acc_norm), read through its TaskManager with `include_path`;
- tunesmith: what `tunesmith eval MODEL --mc FILE` runs (`api.evaluate_run(..., mc=FILE, precision="fp32")`).
Printed: acc, acc_norm and seconds of each side (model load + scoring; and scoring alone), the ratio, and the
per-question comparison: largest log-likelihood difference, questions whose acc or acc_norm pick differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {file}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question.stem}}}}\\nAnswer:"
doc_to_choice: "{{{{question.choices | map(attribute='text') | list}}}}"
doc_to_target: "{{{{(question.choices | map(attribute='label') | list).index(answerKey)}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def run_lm_eval(model_path: str, file: str, batch_size: int) -> dict:
    """lm-evaluation-harness's own pipeline on the file: per-question log-likelihoods, acc, acc_norm, seconds."""
    start = time.perf_counter()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "arc_style.yaml").write_text(TASK_YAML.format(task="arc_style", file=file,
                                                                      cache=Path(folder) / "cache"))
        imported = time.perf_counter()
        lm = HFLM(pretrained=model_path, dtype="float32", batch_size=batch_size, device="cpu")
        loaded, cpu = time.perf_counter(), time.process_time()
        out = lm_eval.simple_evaluate(model=lm, tasks=["arc_style"], task_manager=TaskManager(include_path=folder),
                                      log_samples=True, verbosity="ERROR")
        done, cpu = time.perf_counter(), time.process_time() - cpu
    samples = sorted(out["samples"]["arc_style"], key=lambda s: s["doc_id"])
    metrics = out["results"]["arc_style"]
    return {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"],
            "loglikelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
            "acc_items": [s["acc"] for s in samples], "acc_norm_items": [s["acc_norm"] for s in samples],
            "import_s": imported - start, "load_s": loaded - imported, "score_s": done - loaded, "score_cpu_s": cpu}


def run_tunesmith(model_path: str, file: str, batch_tokens: int) -> dict:
    """What `tunesmith eval MODEL --mc FILE` runs, in fp32, timed as load + scoring (evaluate_choices does both)."""
    start = time.perf_counter()
    from tunesmith.data.choices import load_choice_items
    from tunesmith.evaluate.choices import score_choices
    from tunesmith.use.generation import load_for_inference

    imported = time.perf_counter()
    generator = load_for_inference(model_path, "base", precision="fp32")
    items = load_choice_items(file)
    loaded, cpu = time.perf_counter(), time.process_time()
    result = score_choices(generator.model, generator.tokenizer, items, progress=False, batch_tokens=batch_tokens)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    return {"acc": result["acc"]["mean"], "acc_norm": result["acc_norm"]["mean"],
            "loglikelihoods": [i["loglikelihoods"] for i in result["items"]],
            "acc_items": [i["acc"] for i in result["items"]], "acc_norm_items": [i["acc_norm"] for i in result["items"]],
            "import_s": imported - start, "load_s": loaded - imported, "score_s": done - loaded, "score_cpu_s": cpu}


def child(side: str, args) -> dict:
    """Run one side in a fresh process, so neither inherits the other's imports, threads or memory."""
    command = [sys.executable, __file__, "--child", side, "--file", args.file, "--model", args.model,
               "--lm-eval-batch-size", str(args.lm_eval_batch_size), "--batch-tokens", str(args.batch_tokens)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{side} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(ours: dict, theirs: dict) -> dict:
    """Per-question agreement: the largest log-likelihood difference, and the questions whose picks differ."""
    diff = max(abs(a - b) for xs, ys in zip(ours["loglikelihoods"], theirs["loglikelihoods"]) for a, b in zip(xs, ys))
    return {"max_ll_diff": diff,
            "acc_differs": [i for i, (a, b) in enumerate(zip(ours["acc_items"], theirs["acc_items"])) if a != b],
            "acc_norm_differs": [i for i, (a, b) in enumerate(zip(ours["acc_norm_items"], theirs["acc_norm_items"]))
                                 if a != b]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="multiple-choice file in ARC's native shape (default: make_arc_style.py's)")
    parser.add_argument("--model", default=MODEL, help="model alias or folder (default: the embedded SmolLM2)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; the best time of each side counts")
    parser.add_argument("--lm-eval-batch-size", type=int, default=8, help="HFLM batch_size (requests per forward)")
    parser.add_argument("--batch-tokens", type=int, default=1024, help="tunesmith's padded positions per forward")
    parser.add_argument("--save", metavar="FILE.json", help="also write both sides' per-question results here")
    parser.add_argument("--child", choices=["lm-eval", "tunesmith"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_lm_eval if args.child == "lm-eval" else run_tunesmith
        size = args.lm_eval_batch_size if args.child == "lm-eval" else args.batch_tokens
        print(json.dumps(run(args.model, args.file, size)))
        return

    from tunesmith.models import resolve_model_path

    args.model = resolve_model_path(args.model)  # converts the embedded GGUF once, outside the timings
    if args.file is None:
        args.file = str(Path(tempfile.mkdtemp()) / "arc_style_200.jsonl")
        made = subprocess.run([sys.executable, str(HERE / "make_arc_style.py")], capture_output=True, text=True,
                              check=True)
        Path(args.file).write_text(made.stdout)
    runs: dict[str, list[dict]] = {"lm-eval": [], "tunesmith": []}
    for _ in range(args.rounds):
        for side in runs:
            runs[side].append(child(side, args))
            r = runs[side][-1]
            print(f"  {side}: load {r['load_s']:.1f} s, scoring {r['score_s']:.1f} s ({r['score_cpu_s']:.1f} CPU s)",
                  file=sys.stderr)
    best = {side: min(rs, key=lambda r: r["load_s"] + r["score_s"]) for side, rs in runs.items()}
    print(f"{'':10} {'acc':>7} {'acc_norm':>9} {'load+score s':>13} {'score s':>8} {'score CPU s':>12}   "
          f"({args.file}, {args.model})")
    for side, r in best.items():
        print(f"{side:10} {r['acc']:7.4f} {r['acc_norm']:9.4f} {r['load_s'] + r['score_s']:13.2f} "
              f"{r['score_s']:8.2f} {r['score_cpu_s']:12.2f}")
    theirs, ours = best["lm-eval"], best["tunesmith"]
    print(f"speed-up: x{(theirs['load_s'] + theirs['score_s']) / (ours['load_s'] + ours['score_s']):.2f} "
          f"(load + scoring), x{theirs['score_s'] / ours['score_s']:.2f} (scoring alone), "
          f"x{theirs['score_cpu_s'] / ours['score_cpu_s']:.2f} (scoring CPU time); "
          f"lm-eval batch_size {args.lm_eval_batch_size}, tunesmith batch_tokens {args.batch_tokens}")
    agreement = compare(ours, theirs)
    print(f"per question: max |loglikelihood difference| {agreement['max_ll_diff']:.2e}; acc picks differ on "
          f"{agreement['acc_differs'] or 'none'}, acc_norm on {agreement['acc_norm_differs'] or 'none'}")
    if args.save:
        Path(args.save).write_text(json.dumps({"file": args.file, "model": args.model, "runs": runs}))
    same = ours["acc"] == theirs["acc"] and ours["acc_norm"] == theirs["acc_norm"]
    print("identical acc and acc_norm" if same else "acc or acc_norm DIFFER")


if __name__ == "__main__":
    main()
