"""Evaluating a run (or a plain model) into result files: did the finetune help?

Each model is read through `tunesmith.use.generation`, so it sees exactly the template training used, and
measured three ways:
- test loss and perplexity on response tokens only (the tokens training put a loss on), by the one routine
  training uses too (`tunesmith.evaluate.test_loss`);
- generation metrics on greedy answers (`tunesmith.evaluate.metrics`), each a macro average with a bootstrap 95%
  interval, plus the share of answers that are empty, ran into `max_new_tokens`, or repeat themselves;
- multiple-choice benchmarks scored by log-likelihood as lm-evaluation-harness scores them
  (`tunesmith.evaluate.choices`).

Results go to `eval/metrics.json` and `eval/predictions.jsonl`, written atomically. torch and the models are
imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tunesmith.data.choices import load_choice_items
from tunesmith.evaluate.choices import score_choices
from tunesmith.evaluate.metrics import (KEY_WORD_MAX_SHARE, REPETITION_NGRAM, REPETITION_THRESHOLD, corpus_scores,
                                        distinctive_words, error_flags, error_shares, example_metrics,
                                        summarize_metrics)


def response_loss(model, examples: Sequence[dict], pad_token_id: int, batch_size: int = 8,
                  chunk_tokens: int | None = None, progress: bool = True) -> dict[str, float]:
    """Test loss of a plain or PEFT model over encoded examples: `test_loss` on padded rows sorted by length.

    The output layer runs on the answer positions alone, `chunk_tokens` at a time (no logits for prompts).

    [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}] -> {"loss": 2.31, "perplexity": 10.1, "tokens": 2}
    """
    from tqdm.auto import tqdm

    from tunesmith.evaluate.test_loss import test_batches, test_loss
    from tunesmith.modeling.losses import CausalLMLoss

    device = next(model.parameters()).device
    batches = test_batches(examples, batch_size, False, 0, pad_token_id, by_length=True)
    with tqdm(total=len(examples), desc="test loss", unit="ex", disable=not progress) as bar:
        result = test_loss(CausalLMLoss(model, chunk_tokens).eval(), batches, device, progress=bar)
    return result.to_dict() if result else {"loss": math.nan, "perplexity": math.nan, "tokens": 0}


@dataclass
class EvalSet:
    """What a model is evaluated on: records to answer (with their references) and encoded loss examples."""

    records: list  # list[Record]: rendered with the model's template, answered, compared with `reference_of`
    examples: list[dict]  # {"input_ids", "labels"} as training saw them
    source: str


def reference_of(record) -> str:
    """The answer a record expects: its response, or a conversation's last assistant message; when that message
    calls tools, its text and then each call as the `<tool_call>` block the shipped tool template writes (what
    `tunesmith.data.tools.parse_tool_calls` reads back), so a test record ending in a call is scored against it.

    Record(prompt="2+2?", response="4") -> "4"
    assistant calling weather({"city": "Oslo"})
    -> '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    """
    if record.kind != "chat":
        return record.response
    last = record.messages[-1]
    if last.role != "assistant":
        return ""
    import json

    calls = [f'<tool_call>\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n</tool_call>'
             for c in last.tool_calls]
    return "\n".join([last.content, *calls] if last.content else calls)


def question_of(record) -> str:
    """Everything the model is shown before the answer (system, prompt, input, earlier turns), as one text:
    key-fact recall leaves its words out, since repeating them shows no fact learned.

    Record(prompt="Price of the Wren?", input="", response="39 euros") -> "Price of the Wren?"
    """
    if record.kind == "chat":
        return "\n".join(m.content for m in record.messages[:-1])
    return "\n".join(part for part in (record.system, record.prompt, record.input) if part)


def require_test_split(paths):
    """The run's `prepared/test_records.jsonl`, checked before any model is loaded.

    Raises:
        RunError: the run has no prepared test split.
    """
    from tunesmith.errors import RunError

    records_file = paths.prepared / "test_records.jsonl"
    if not records_file.is_file():
        raise RunError(f"{paths.root}: no prepared test split ({records_file} is missing); run `tunesmith data "
                       f"prepare CONFIG` or give a data file with --data")
    return records_file


def eval_set_from_run(paths, limit: int | None = None) -> EvalSet:
    """The run's prepared test split: records from `test_records.jsonl`, loss examples from `prepared/test`.

    Raises:
        RunError: the run has no prepared test split.
    """
    from tunesmith.data import record_from_dict
    from tunesmith.prepare.pipeline import load_prepared
    from tunesmith.runs import read_jsonl

    records_file = require_test_split(paths)
    _, test, _ = load_prepared(paths)
    records = [record_from_dict(row) for row in read_jsonl(records_file)]
    examples = [test[i] for i in range(min(len(test), limit or len(test)))]
    return EvalSet(records[:limit] if limit else records, examples, str(records_file))


def eval_set_from_file(path, data_config, tokenizer, template, tokenization, max_length: int,
                       limit: int | None = None, stripped_form: str | None = None) -> EvalSet:
    """Any data file the data layer reads, encoded with the model's template exactly as training would.

    `stripped_form` is the baked-in template the run's training data was stripped of (`Generator.stripped_form`):
    the file's records lose it too, prompts and references alike, so the model is measured on what it learned.

    Raises:
        DataError: the file cannot be read (see `tunesmith.data.load_records`).
    """
    from tunesmith.data import load_records
    from tunesmith.data.strip import strip_record
    from tunesmith.prepare.tokenization import build_example, tokenize_records

    records = load_records(path, data_config).records
    records = records[:limit] if limit else records
    if stripped_form:
        records = [strip_record(record, stripped_form) for record in records]
    examples = [build_example(t, tokenization, max_length) for t in tokenize_records(records, tokenizer, template)]
    return EvalSet(records, [e for e in examples if e is not None], str(path))


def evaluate_generations(generator, records: Sequence, options, batch_size: int = 8,
                         progress: bool = True) -> tuple[list[str], list]:
    """Rendered prompts (the model's own template) and the model's answers, in record order."""
    prompts = [generator.render(r) for r in records]
    return prompts, generator.generate(prompts, options, batch_size=batch_size, progress=progress)


def score_generations(generations: Sequence, references: Sequence[str],
                      key_words: Sequence[set[str]] | None = None) -> list[dict]:
    """Per-example metrics and error flags of answers against their references.

    `key_words` are each reference's distinctive words within the whole evaluation set (`distinctive_words`);
    without them, those of `references` taken as the set, with no questions to leave out.
    """
    keys = distinctive_words(references) if key_words is None else key_words
    return [{"metrics": example_metrics(g.text, ref, key), "errors": error_flags(g.text, g.finish_reason)}
            for g, ref, key in zip(generations, references, keys)]


def model_summary(loss: dict, scored: Sequence[dict], generations: Sequence, references: Sequence[str],
                  samples: int, seed: int) -> dict:
    """One model's line in metrics.json: loss, perplexity, metric means with intervals, corpus scores, errors."""
    return {
        "n": len(scored),
        "loss": loss["loss"], "perplexity": loss["perplexity"], "loss_tokens": loss["tokens"],
        "metrics": summarize_metrics([s["metrics"] for s in scored], samples, seed),
        "corpus": corpus_scores([g.text for g in generations], references) if scored else {},
        "errors": error_shares([s["errors"] for s in scored]),
        "mean_new_tokens": sum(g.num_tokens for g in generations) / len(generations) if generations else 0.0,
    }


def evaluate_models(target: str, labels: Sequence[str], eval_set_for, eval_config, precision: str = "auto",
                    progress: bool = True, on_model=None) -> tuple[dict, list[dict]]:
    """Evaluate each model in turn (one in memory at a time): loss, generations, metrics.

    `labels` are "base"/"finetuned" (a run) or "model" (a plain model); `eval_set_for(generator)` builds the
    evaluation set from the first model's tokenizer and template; `on_model(label, generator)` measures more
    while a model is loaded (the benchmarks). Returns (metrics.json content, predictions rows).
    """
    import gc

    from tunesmith.use.generation import GenerationOptions, load_for_inference

    options = GenerationOptions(max_new_tokens=eval_config.max_new_tokens, do_sample=eval_config.do_sample,
                                temperature=eval_config.temperature, top_p=eval_config.top_p, seed=eval_config.seed)
    eval_set, rows, models = None, [], {}
    for label in labels:
        generator = load_for_inference(target, "base" if label == "base" else "finetuned", precision=precision)
        if eval_set is None:
            eval_set = eval_set_for(generator)
            answerable = [r for r in eval_set.records if r.kind != "text"]
            references = [reference_of(r) for r in answerable]
            key_words = distinctive_words(references, [question_of(r) for r in answerable])
            rows = [{"index": i, "where": r.where, "question": question_of(r), "reference": ref,
                     "key_words": sorted(key)}
                    for i, (r, ref, key) in enumerate(zip(answerable, references, key_words))]
        pad_id = generator.tokenizer.pad_token_id
        loss = response_loss(generator.model, eval_set.examples, pad_id, eval_config.batch_size, progress=progress)
        prompts, generations = evaluate_generations(generator, answerable, options, eval_config.batch_size, progress)
        scored = score_generations(generations, references, key_words)
        for row, prompt, generation, score in zip(rows, prompts, generations, scored):
            row["prompt"] = prompt
            row[label] = {"output": generation.text, "finish_reason": generation.finish_reason,
                          "num_tokens": generation.num_tokens, **score}
        models[label] = model_summary(loss, scored, generations, references, eval_config.bootstrap_samples,
                                      eval_config.seed)
        if on_model is not None:
            on_model(label, generator)
        del generator
        gc.collect()
    return metrics_content(target, eval_set, len(rows), options, models), rows


def metrics_content(target: str, eval_set: EvalSet, n: int, options, models: dict) -> dict:
    """metrics.json: what was evaluated and how (so a later eval can tell whether it is the same set), then
    each model's summary."""
    return {
        "target": str(target), "source": eval_set.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": n, "n_loss": len(eval_set.examples),
        "scale": "metrics are 0-100; error shares are fractions 0-1",
        "key_fact_recall": f"share of the reference's key words the answer contains: its numbers and the words "
                           f"at most {KEY_WORD_MAX_SHARE:.0%} of the references contain, less the question's words "
                           f"(each row's key_words in predictions.jsonl)",
        "normalization": "exact_match_normalized and token_f1 use SQuAD v1.1 normalization: lowercase, drop "
                         "punctuation and the articles a/an/the, collapse whitespace",
        "repetitive": f"more than {REPETITION_THRESHOLD:.0%} of the words lie in a word {REPETITION_NGRAM}-gram "
                      f"that occurs at least twice",
        "generation": {"max_new_tokens": options.max_new_tokens, "do_sample": options.do_sample,
                       "temperature": options.temperature, "top_p": options.top_p},
        "models": models,
    }


def merge_previous(out_dir, metrics: dict, rows: list[dict]) -> tuple[dict, list[dict]]:
    """Keep the other model's results from an earlier eval of the same set (eval base, later finetuned)."""
    import json
    from pathlib import Path

    from tunesmith.runs import read_jsonl

    old_file = Path(out_dir) / "metrics.json"
    if not old_file.is_file():
        return metrics, rows
    try:
        old = json.loads(old_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return metrics, rows
    if (old.get("source"), old.get("n"), old.get("generation")) != (metrics["source"], metrics["n"],
                                                                    metrics["generation"]):
        return metrics, rows
    kept = {k: v for k, v in old.get("models", {}).items() if k not in metrics["models"]}
    old_rows = read_jsonl(Path(out_dir) / "predictions.jsonl")
    if len(old_rows) != len(rows):
        return metrics, rows
    for row, old_row in zip(rows, old_rows):
        row.update({k: old_row[k] for k in kept if k in old_row})
    return {**metrics, "models": {**kept, **metrics["models"]}}, rows


def write_results(out_dir, metrics: dict, rows: Sequence[dict]) -> None:
    """`metrics.json` and `predictions.jsonl`, each written atomically."""
    import json
    from pathlib import Path

    from tunesmith.runs import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "predictions.jsonl",
                      "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    atomic_write_json(out_dir / "metrics.json", metrics)


def model_labels(which: str | None, is_trained: bool, compare_base: bool) -> list[str]:
    """Which models to evaluate: a trained model's base and/or finetuned weights, or a plain model itself.

    >>> model_labels(None, True, True), model_labels("base", True, True), model_labels(None, False, True)
    (['base', 'finetuned'], ['base'], ['model'])

    Raises:
        RunError: base/finetuned asked of a plain model, or an unknown choice.
    """
    from tunesmith.errors import RunError

    if which not in (None, "base", "finetuned", "both"):
        raise RunError(f"--model {which!r}: choose base, finetuned or both")
    if not is_trained:
        if which is not None:
            raise RunError(f"--model {which}: this is a plain model, not a run, so it has no base/finetuned pair; "
                           f"leave --model out")
        return ["model"]
    which = which or ("both" if compare_base else "finetuned")
    return ["base", "finetuned"] if which == "both" else [which]


def evaluate(target: str, labels: Sequence[str], eval_config, *, paths=None, data: str | None = None,
             data_config=None, tokenization=None, precision: str = "auto", out_dir=None, judge=None,
             judge_cache=None, progress: bool = True) -> dict:
    """Test loss and generation metrics of each model on the run's test split or a data file, the benchmarks of
    `eval_config.benchmarks` scored while each model is loaded, and, with a `judge` (a `Teacher`), a grade for
    every answer (cached in `judge_cache`).

    With `out_dir`, writes `metrics.json`, `predictions.jsonl` and one `mc-<stem>.json` per benchmark there
    (keeping the other model's results from an earlier eval of the same set). Returns the metrics.json content,
    plus `benchmarks`: each benchmark's result as its file holds it, less the per-question items.

    Raises:
        RunError: nothing to evaluate on (a plain model without `data`, a run without a test split).
        DataError: the data file or a benchmark file is invalid.
    """
    from tunesmith.config import DataConfig, TokenizationConfig
    from tunesmith.errors import RunError
    from tunesmith.prepare.manifest import Manifest
    from tunesmith.prepare.tokenization import resolve_max_length

    if data is None and paths is None:
        raise RunError(f"{target}: not a run folder, so there is no test split; give a data file with --data FILE")
    if data is None:
        require_test_split(paths)
    benchmarks = {path: load_choice_items(path) for path in eval_config.benchmarks}  # bad files fail before loading
    scores: dict[str, dict] = {path: {} for path in benchmarks}

    def eval_set_for(generator) -> EvalSet:
        if data is None:
            return eval_set_from_run(paths, eval_config.limit)
        tokens = tokenization or TokenizationConfig()
        prepared = paths is not None and paths.manifest.is_file()
        max_length = (Manifest.read(paths.manifest).max_length if prepared
                      else resolve_max_length(tokens, [], generator.context_length))
        return eval_set_from_file(data, data_config or DataConfig(), generator.tokenizer, generator.template,
                                  tokens, int(max_length), eval_config.limit, generator.stripped_form)

    def score_benchmarks(label: str, generator) -> None:
        for path, items in benchmarks.items():
            scores[path][label] = score_choices(generator.model, generator.tokenizer, items,
                                                eval_config.bootstrap_samples, eval_config.seed, progress)

    metrics, rows = evaluate_models(target, labels, eval_set_for, eval_config, precision, progress, score_benchmarks)
    if judge is not None:
        from tunesmith.evaluate.judge import JUDGE_PROMPT, judge_rows

        for label, summary in judge_rows(judge, rows, labels, judge_cache).items():
            metrics["models"][label]["judge"] = summary
        metrics["judge"] = {"name": judge.name, "prompt": JUDGE_PROMPT}
    results = [choices_content(target, path, len(benchmarks[path]), scores[path]) for path in benchmarks]
    if out_dir is not None:
        metrics, rows = merge_previous(out_dir, metrics, rows)
        write_results(out_dir, metrics, rows)
        results = [write_choices(choices_file(out_dir, result["source"]), result) for result in results]
    return {**metrics, "benchmarks": [without_items(result) for result in results]}


CHOICE_METHOD = ("lm-evaluation-harness multiple_choice: context 'Question: {q}\\nAnswer:', continuation ' ' + "
                 "choice; acc = argmax summed log-likelihood, acc_norm = argmax log-likelihood per character of the "
                 "choice")


def choices_content(target: str, path, n: int, models: dict) -> dict:
    """A multiple-choice result file: what was scored and how, then each model's acc and acc_norm."""
    return {"target": str(target), "source": str(path), "n": n, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "method": CHOICE_METHOD, "models": models}


def choices_file(out_dir, source) -> Path:
    """Where a multiple-choice file's results go: `mc-<stem>.json` in the eval folder."""
    return Path(out_dir) / f"mc-{Path(str(source)).stem}.json"


def choice_change(base: dict, tuned: dict, samples: int = 1000, seed: int = 0) -> dict:
    """finetuned - base of acc and acc_norm with a paired bootstrap 95% interval (the same questions, so
    resampled together): an interval that holds 0 says the finetune may have kept what the base knew.

    >>> choice_change({"items": [{"acc": 1.0, "acc_norm": 1.0}, {"acc": 1.0, "acc_norm": 0.0}]},
    ...               {"items": [{"acc": 0.0, "acc_norm": 1.0}, {"acc": 1.0, "acc_norm": 1.0}]}, samples=0)
    {'acc': {'mean': -0.5, 'low': -0.5, 'high': -0.5}, 'acc_norm': {'mean': 0.5, 'low': 0.5, 'high': 0.5}}
    """
    diffs = [{name: t[name] - b[name] for name in ("acc", "acc_norm")}
             for b, t in zip(base.get("items", []), tuned.get("items", []))]
    return summarize_metrics(diffs, samples, seed)


def write_choices(out_file, result: dict) -> dict:
    """Write a multiple-choice result, keeping the other model's scores from an earlier run of the same file and
    adding the base -> finetuned `change` when both are there; returns what was written."""
    import json

    from tunesmith.runs import atomic_write_json

    try:
        old = json.loads(Path(out_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    models = dict(result["models"])
    if isinstance(old, dict) and (old.get("source"), old.get("n")) == (result["source"], result["n"]):
        models = {**{k: v for k, v in (old.get("models") or {}).items() if k not in models}, **models}
    result = {**result, "models": models}
    result.pop("change", None)
    if "base" in models and "finetuned" in models:
        result["change"] = choice_change(models["base"], models["finetuned"])
    atomic_write_json(out_file, result)
    return result


def without_items(result: dict) -> dict:
    """A multiple-choice result without the per-question log-likelihoods, for summaries."""
    return {**result, "models": {label: {k: v for k, v in model.items() if k != "items"}
                                 for label, model in result["models"].items()}}


def evaluate_choices(target: str, labels: Sequence[str], path: str, eval_config, *, precision: str = "auto",
                     out_file=None, progress: bool = True) -> dict:
    """acc and acc_norm of each model on a multiple-choice file, optionally saved as JSON (next to the other
    model's earlier scores of the same file).

    Raises:
        DataError: the file has records that are not multiple-choice questions.
    """
    import gc

    from tunesmith.use.generation import load_for_inference

    items = load_choice_items(path, eval_config.limit)
    # lm-evaluation-harness scores a float32 checkpoint in float32; `auto` would pick bf16 on a CPU with fast bf16
    # and move acc_norm by a few questions in 200. Scores are meant to be comparable with lm-eval's, so `auto`
    # means fp32 here; an explicit precision is kept.
    precision = "fp32" if precision == "auto" else precision
    models = {}
    for label in labels:
        generator = load_for_inference(target, "base" if label == "base" else "finetuned", precision=precision)
        models[label] = score_choices(generator.model, generator.tokenizer, items, eval_config.bootstrap_samples,
                                      eval_config.seed, progress)
        del generator
        gc.collect()
    result = choices_content(target, path, len(items), models)
    return write_choices(out_file, result) if out_file is not None else result
