"""The whole lifecycle through the real CLI on the tiny model, so the parts are proven to work together:

serve a teacher → `generate from-docs` against it → `data inspect` → `train` → `eval` → `report` → `serve` the result.

A random model cannot write question/answer JSON, so the teacher is the tiny model first trained (with
`tunesmith train`, like any run) on one record: the exact from-docs request for the test's one document chunk,
answered with a valid JSON list. Greedy decoding then reproduces that answer, so `tunesmith serve` of this run is
a real teacher for the one request that matters. Servers run as their own processes (`tunesmith serve` blocks);
the other commands go through `tunesmith.cli.main` in this process, which saves a torch import per command.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import yaml

from tunesmith.cli import main
from tunesmith.config import FromDocsConfig

from servers import tunesmith_serve

REPO = Path(__file__).resolve().parents[2]

DOCUMENT = ("# Wren kettle\n\nThe Wren kettle holds 1.7 litres of water. It boils a full kettle in four minutes and "
            "switches itself off when the water boils.\n")
PAIRS = [{"question": "How much water does the Wren kettle hold?", "answer": "It holds 1.7 litres."},
         {"question": "How long does the Wren kettle take to boil?", "answer": "About four minutes."}]
TEACHER_STEPS = 80
"""Full finetuning steps at TEACHER_LR after which greedy decoding repeats the one answer word for word (50 steps
already did, at test loss 0.07; 120 reached 0.01 at 3e-3)."""
TEACHER_LR = 5e-3


def _write_config(path: Path, model: Path, data: Path, name: str, training: dict) -> Path:
    """A run config: the tiny model on `data` (also its test file, since one record cannot be split)."""
    config = {"model": {"name": str(model)}, "data": {"path": str(data), "test_path": str(data)},
              "training": {"precision": "fp32", "batch_size": 4, "warmup_ratio": 0.0, **training},
              "eval": {"max_new_tokens": 16, "bootstrap_samples": 50},
              "output": {"runs_dir": str(path.parent / "runs"), "name": name}}
    path.write_text(yaml.safe_dump(config))
    return path


def _teacher_run(tmp_path: Path, model: Path, docs: Path) -> Path:
    """The tiny model trained to answer the from-docs request for the document's one chunk with PAIRS."""
    from tunesmith.datagen.documents import collect_chunks
    from tunesmith.datagen.from_docs import qa_prompt

    options = FromDocsConfig(per_chunk=len(PAIRS))
    (chunk,) = collect_chunks(docs, options.chunk_tokens)
    data = tmp_path / "teacher.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": qa_prompt(chunk, options.per_chunk)},
                                             {"role": "assistant", "content": json.dumps(PAIRS)}]}) + "\n")
    config = _write_config(tmp_path / "teacher.yaml", model, data, "teacher",
                           {"method": "full", "learning_rate": TEACHER_LR, "lr_scheduler": "constant",
                            "max_steps": TEACHER_STEPS, "batch_size": 1})
    assert main(["train", str(config)]) == 0
    return tmp_path / "runs" / "teacher"


def test_serve_generate_inspect_train_eval_report_serve(tiny_model_dir, tmp_path, capsys):
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name], clock = time.monotonic() - clock, time.monotonic()

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kettle.md").write_text(DOCUMENT)
    teacher = _teacher_run(tmp_path, tiny_model_dir, docs)
    lap("train teacher")

    qa = tmp_path / "qa.jsonl"
    with tunesmith_serve(teacher) as url:
        lap("serve teacher")
        # greedy, so the answer is the memorized one; every other teacher setting is the default (max_tokens
        # included, which `tunesmith serve` once refused)
        code = main(["generate", "from-docs", str(docs), "--out", str(qa), "--teacher-url", url,
                     "--per-chunk", str(len(PAIRS)), "--temperature", "0", "--no-progress"])
    lap("generate")
    out = capsys.readouterr().out
    assert code == 0, out
    records = [json.loads(line) for line in qa.read_text().splitlines()]
    assert [{"question": r["question"], "answer": r["answer"]} for r in records] == PAIRS
    assert all(r["source"] == "kettle.md" and r["provenance"]["teacher"].endswith("/chat/completions")
               for r in records)
    assert "holds 2 records" in out and "(0 failed, 0 retries)" in out and "note:" not in out

    assert main(["data", "inspect", str(qa), "--model", str(tiny_model_dir), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "shape:      qa (" in out and "2 records" in out
    assert any(line.split()[:1] == ["response"] and len(line.split()) == 7 for line in out.splitlines())
    lap("inspect")

    config = _write_config(tmp_path / "student.yaml", tiny_model_dir, qa, "student", {"max_steps": 3})
    assert main(["train", str(config)]) == 0
    run = tmp_path / "runs" / "student"
    assert (run / "model" / "tunesmith.json").is_file() and (run / "train_summary.json").is_file()
    lap("train")

    assert main(["eval", str(run)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {"base", "finetuned"} <= set(metrics["models"]) and metrics["models"]["finetuned"]["loss"] > 0
    lap("eval")

    assert main(["report", str(run)]) == 0
    assert "<html" in (run / "report.html").read_text()[:500].lower()
    lap("report")

    with tunesmith_serve(run) as url:
        reply = httpx.post(url + "/chat/completions", timeout=60, json={
            "model": httpx.get(url + "/models", timeout=5).json()["data"][0]["id"], "max_tokens": 8,
            "messages": [{"role": "user", "content": PAIRS[0]["question"]}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    lap("serve result")
    print("lifecycle timings (s):", {k: round(v, 1) for k, v in timings.items()}, file=sys.stderr)
