"""Evaluation: did the finetune help? Test loss, generation metrics, multiple-choice accuracy.

Three measurements, each reading a model through `tunesmith.use.generation` so it sees exactly the template training
used:
- test loss and perplexity on response tokens only (the tokens training put a loss on);
- generation metrics on greedy answers: exact match (raw and SQuAD-normalized), SQuAD token F1, ROUGE-L
  (`rouge-score`), BLEU and chrF (`sacrebleu`), each a macro average with a bootstrap 95% interval, plus the
  share of answers that are empty, ran into `max_new_tokens`, or repeat themselves;
- multiple-choice benchmarks scored by log-likelihood exactly as lm-evaluation-harness scores them.

Every metric is on a 0-100 scale (as sacrebleu and the SQuAD script report them), per example and averaged.
Results go to `eval/metrics.json` and `eval/predictions.jsonl`, written atomically.

torch is imported inside functions: the metric functions are usable (and tested) without a model.
"""

from __future__ import annotations

import math
import re
import string
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

METRICS = ("exact_match", "exact_match_normalized", "token_f1", "rouge_l", "bleu", "chrf")
"""Per-example generation metrics, in the order tables show them."""

ERROR_CATEGORIES = ("empty", "length", "repetitive")
"""Ways an answer fails regardless of its content: nothing said, cut off at max_new_tokens, looping."""

REPETITION_NGRAM = 4
REPETITION_THRESHOLD = 0.5
"""An answer is repetitive when more than half of its words lie inside a word 4-gram that occurs twice or more."""


# ---------------------------------------------------------------- text metrics (pure, 0-100)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalization: lowercase, drop ASCII punctuation and the articles a/an/the, collapse
    whitespace.

    >>> normalize_answer("  The Cat, sat!\\n")
    'cat sat'
    """
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str, normalized: bool = False) -> float:
    """100 when the strings are identical (raw: after stripping surrounding whitespace), else 0.

    >>> exact_match("Paris.", "paris"), exact_match("Paris.", "paris", normalized=True)
    (0.0, 100.0)
    """
    if normalized:
        return 100.0 * (normalize_answer(prediction) == normalize_answer(reference))
    return 100.0 * (prediction.strip() == reference.strip())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 on normalized words: harmonic mean of word precision and recall (bag of words).

    Two empty answers agree fully; one empty answer scores 0.

    >>> round(token_f1("the big red car", "a red car"), 1)  # 2 shared of 3 predicted, 2 of 2 reference
    80.0
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return 100.0 * (pred == ref)
    shared = sum((Counter(pred) & Counter(ref)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


class _WordTokenizer:
    """rouge-score's tokenizer keeps only [a-z0-9]; this keeps letters and digits of every script, so
    non-English answers are not scored as empty. On ASCII text it gives the same tokens as the default."""

    _word = re.compile(r"[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._word.findall(text.lower())


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_WordTokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common word subsequence), via `rouge-score`, no stemming.

    >>> round(rouge_l("the cat sat on the mat", "the cat is on the mat"), 2)  # LCS 5 of 6 both ways
    83.33
    """
    return 100.0 * _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (13a tokenization, exponential smoothing), 0-100."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score


def sentence_chrf(prediction: str, reference: str) -> float:
    """sacrebleu's sentence chrF (character 6-grams, beta 2), 0-100."""
    import sacrebleu

    return sacrebleu.sentence_chrf(prediction, [reference]).score


def example_metrics(prediction: str, reference: str) -> dict[str, float]:
    """Every per-example metric of one answer against its reference.

    >>> example_metrics("Paris", "Paris")["rouge_l"]
    100.0
    """
    return {
        "exact_match": exact_match(prediction, reference),
        "exact_match_normalized": exact_match(prediction, reference, normalized=True),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "bleu": sentence_bleu(prediction, reference),
        "chrf": sentence_chrf(prediction, reference),
    }


def corpus_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus-level BLEU and chrF (n-gram counts pooled over all examples, as papers report them)."""
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score,
            "chrf": sacrebleu.corpus_chrf(list(predictions), [list(references)]).score}


# ---------------------------------------------------------------- error categories

def repetition_share(text: str, n: int = REPETITION_NGRAM) -> float:
    """Share of words lying inside a word n-gram that occurs at least twice in the text.

    A model stuck in a loop repeats whole phrases, so almost every word is covered; ordinary prose
    rarely repeats four words in a row.

    >>> repetition_share("go to bed go to bed go to bed", n=3)
    1.0
    >>> repetition_share("one two three four five six", n=3)
    0.0
    """
    words = text.split()
    if len(words) <= n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = set()
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered.update(range(i, i + n))
    return len(covered) / len(words)


def is_repetitive(text: str) -> bool:
    """True when more than REPETITION_THRESHOLD of the words sit in repeated word 4-grams."""
    return repetition_share(text) > REPETITION_THRESHOLD


def error_flags(text: str, finish_reason: str) -> dict[str, bool]:
    """Which error categories one answer falls into (several can hold at once).

    >>> error_flags("", "stop")
    {'empty': True, 'length': False, 'repetitive': False}
    """
    return {"empty": not text.strip(), "length": finish_reason == "length", "repetitive": is_repetitive(text)}


# ---------------------------------------------------------------- aggregation

def bootstrap_interval(values: Sequence[float], samples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the examples with replacement `samples` times.

    Deterministic for a given seed. With no resamples or fewer than two values the interval is the mean itself.

    >>> bootstrap_interval([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size < 2 or samples == 0:
        return (float(data.mean()), float(data.mean()))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def summarize_metrics(per_example: Sequence[dict[str, float]], samples: int = 1000,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Macro average with a bootstrap 95% interval for each metric.

    >>> summarize_metrics([{"bleu": 10.0}, {"bleu": 30.0}], samples=0)
    {'bleu': {'mean': 20.0, 'low': 20.0, 'high': 20.0}}
    """
    names = list(per_example[0]) if per_example else []
    summary = {}
    for name in names:
        values = [row[name] for row in per_example]
        low, high = bootstrap_interval(values, samples, seed)
        summary[name] = {"mean": sum(values) / len(values), "low": low, "high": high}
    return summary


def error_shares(flags: Sequence[dict[str, bool]]) -> dict[str, float]:
    """Fraction (0-1) of answers in each error category.

    >>> error_shares([{"empty": True, "length": False, "repetitive": False},
    ...               {"empty": False, "length": False, "repetitive": False}])
    {'empty': 0.5, 'length': 0.0, 'repetitive': 0.0}
    """
    n = len(flags)
    return {name: (sum(f[name] for f in flags) / n if n else 0.0) for name in ERROR_CATEGORIES}


# ---------------------------------------------------------------- test loss

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


# ---------------------------------------------------------------- multiple choice (lm-evaluation-harness rules)

@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: its choices' texts and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    where: str = ""


def _choice_columns(choices) -> tuple[list[str], list[str]] | None:
    """(texts, labels) from ["x", "y"], [{"text", "label"}, ...] or {"text": [...], "label": [...]}."""
    if isinstance(choices, dict) and isinstance(choices.get("text"), list):
        texts, labels = choices["text"], choices.get("label") or []
    elif isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
        texts, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
    elif isinstance(choices, list):
        texts, labels = choices, []
    else:
        return None
    if len(texts) < 2 or not all(isinstance(t, str) and t for t in texts):
        return None  # an empty choice has no length to normalize acc_norm by
    if len(labels) != len(texts):
        labels = [chr(ord("A") + i) for i in range(len(texts))]
    return list(texts), [str(label) for label in labels]


def _answer_index(answer, texts: list[str], labels: list[str]) -> int | None:
    """0-based index from an index, a label ("B") or the right choice's text."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer if 0 <= answer < len(texts) else None
    if isinstance(answer, str):
        for column in (labels, texts):
            if answer.strip() in column:
                return column.index(answer.strip())
    return None


def parse_choice_item(data: dict, file: str = "", line: int = 0) -> ChoiceItem:
    """A multiple-choice record, flat or in ARC's native shape, as a ChoiceItem.

    {"question": "2+2?", "choices": ["3", "4"], "answer": 1}                      -> ChoiceItem("2+2?", ("3", "4"), 1)
    {"question": {"stem": "2+2?", "choices": [{"text": "3", "label": "A"}, {"text": "4", "label": "B"}]},
     "answerKey": "B"}                                                            -> ChoiceItem("2+2?", ("3", "4"), 1)
    `answer` may be a 0-based index, a label (A, B, ... unless the choices carry their own) or a choice's text.

    Raises:
        DataError: naming the file, line and field that does not fit.
    """
    from tunesmith.errors import DataError

    question, choices = data.get("question"), data.get("choices")
    if isinstance(question, dict):
        question, choices = question.get("stem"), question.get("choices")
    if not isinstance(question, str) or not question.strip():
        raise DataError("expected a non-empty question (or ARC's question.stem)", file=file, line=line,
                        field="question")
    columns = _choice_columns(choices)
    if columns is None:
        raise DataError("expected at least two non-empty choices: a list of strings or of {text, label}",
                        file=file, line=line, field="choices")
    texts, labels = columns
    key = "answer" if "answer" in data else "answerKey"
    answer = _answer_index(data.get(key), texts, labels)
    if answer is None:
        raise DataError(f"{data.get(key)!r} is not a choice index (0-{len(texts) - 1}), a label "
                        f"({', '.join(labels)}) or one of the choices' texts", file=file, line=line, field=key)
    return ChoiceItem(question, tuple(texts), answer, f"{file}:{line}")


def load_choice_items(path, limit: int | None = None) -> list[ChoiceItem]:
    """Every multiple-choice record of a file (JSONL, JSON, CSV...).

    Raises:
        DataError: listing every record that does not parse.
    """
    from tunesmith.data.load import read_rows
    from tunesmith.errors import DataError

    items, problems = [], []
    for row in read_rows(path):
        if row.problem is not None:
            problems.append(row.problem)
            continue
        try:
            items.append(parse_choice_item(row.data, row.file, row.line))
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems)
    if not items:
        raise DataError(f"no multiple-choice records in {path}", file=str(path))
    return items[:limit] if limit else items


def choice_context(question: str) -> str:
    """The prompt lm-evaluation-harness gives ARC-style tasks (no chat template, zero-shot)."""
    return f"Question: {question}\nAnswer:"


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split the way lm-evaluation-harness splits them.

    Trailing spaces of the context move to the continuation; the whole text is encoded once and the
    continuation is what follows the context's own encoding, so the continuation tokens are those the model
    would see in the full text.

    ("Answer: ", "yes") -> (ids of "Answer:", ids of " yes" as tokenized inside "Answer: yes")
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def choice_loglikelihoods(model, tokenizer, item: ChoiceItem) -> list[float]:
    """Summed log-probability of " " + each choice after the question's context.

    The context runs through the model once; its KV cache is repeated for the choices, which then run
    together as one right-padded batch, so a question costs two forward passes whatever its number of
    choices. When context + continuation exceed the model's context, the context loses tokens on the left
    (as lm-evaluation-harness does).
    """
    import torch

    from tunesmith.models import context_length

    pairs = [encode_pair(tokenizer, choice_context(item.question), " " + choice) for choice in item.choices]
    context_ids = pairs[0][0]
    continuations = [cont for _, cont in pairs]
    longest = max(len(c) for c in continuations)
    context_ids = context_ids[-max(1, context_length(model.config) + 1 - longest):]
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([context_ids], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        totals = [first[cont[0]].item() for cont in continuations]
        rest = [i for i, cont in enumerate(continuations) if len(cont) > 1]
        if rest:
            width = max(len(continuations[i]) - 1 for i in rest)
            ids = torch.zeros((len(rest), width), dtype=torch.long)  # padding is masked out
            mask = torch.zeros((len(rest), len(context_ids) + width), dtype=torch.long)
            mask[:, :len(context_ids)] = 1
            for row, i in enumerate(rest):
                feed = continuations[i][:-1]
                ids[row, :len(feed)] = torch.tensor(feed)
                mask[row, len(context_ids):len(context_ids) + len(feed)] = 1
            cache = out.cache
            cache.batch_repeat_interleave(len(rest))
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), cache=cache,
                           use_cache=True).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(rest):
                targets = torch.tensor(continuations[i][1:], device=device)
                totals[i] += logprobs[row, :len(targets)].gather(-1, targets[:, None]).sum().item()
    return totals


def choice_predictions(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(acc pick, acc_norm pick): the highest log-likelihood, and the highest log-likelihood per character of
    the choice text (without the leading space), first index winning ties, as lm-evaluation-harness does.

    >>> choice_predictions([-4.0, -6.0], ["no", "yes, sure"])  # -2.0/char vs -0.67/char
    (0, 1)
    """
    import numpy as np

    lls = np.asarray(loglikelihoods, dtype=float)
    lengths = np.asarray([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def score_choices(model, tokenizer, items: Sequence[ChoiceItem], samples: int = 1000, seed: int = 0,
                  progress: bool = True) -> dict:
    """acc and acc_norm (fractions 0-1, as lm-evaluation-harness reports them) with bootstrap intervals,
    and every item's per-choice log-likelihoods."""
    from tqdm.auto import tqdm

    scored = []
    for item in tqdm(items, desc="multiple choice", unit="q", disable=not progress):
        lls = choice_loglikelihoods(model, tokenizer, item)
        pick, pick_norm = choice_predictions(lls, item.choices)
        scored.append({"where": item.where, "loglikelihoods": lls, "answer": item.answer, "pred": pick,
                       "pred_norm": pick_norm, "acc": float(pick == item.answer),
                       "acc_norm": float(pick_norm == item.answer)})
    summary = summarize_metrics([{"acc": s["acc"], "acc_norm": s["acc_norm"]} for s in scored], samples, seed)
    return {"n": len(scored), **summary, "items": scored}


# ---------------------------------------------------------------- evaluating a run or a model

@dataclass
class EvalSet:
    """What a model is evaluated on: records to answer (with their references) and encoded loss examples."""

    records: list  # list[Record]: rendered with the model's template, answered, compared with `reference_of`
    examples: list[dict]  # {"input_ids", "labels"} as training saw them
    source: str


def reference_of(record) -> str:
    """The answer a record expects: its response, or a conversation's last assistant message.

    Record(prompt="2+2?", response="4") -> "4"
    """
    if record.kind == "chat":
        return record.messages[-1].content if record.messages[-1].role == "assistant" else ""
    return record.response


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
                       limit: int | None = None) -> EvalSet:
    """Any data file the data layer reads, encoded with the model's template exactly as training would.

    Raises:
        DataError: the file cannot be read (see `tunesmith.data.load_records`).
    """
    from tunesmith.data import load_records
    from tunesmith.prepare.tokenization import build_example, tokenize_records

    records = load_records(path, data_config).records
    records = records[:limit] if limit else records
    examples = [build_example(t, tokenization, max_length) for t in tokenize_records(records, tokenizer, template)]
    return EvalSet(records, [e for e in examples if e is not None], str(path))


def evaluate_generations(generator, records: Sequence, options, batch_size: int = 8,
                         progress: bool = True) -> tuple[list[str], list]:
    """Rendered prompts (the model's own template) and the model's answers, in record order."""
    prompts = [generator.render(r) for r in records]
    return prompts, generator.generate(prompts, options, batch_size=batch_size, progress=progress)


def score_generations(generations: Sequence, references: Sequence[str]) -> list[dict]:
    """Per-example metrics and error flags of answers against their references."""
    return [{"metrics": example_metrics(g.text, ref), "errors": error_flags(g.text, g.finish_reason)}
            for g, ref in zip(generations, references)]


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
                    progress: bool = True) -> tuple[dict, list[dict]]:
    """Evaluate each model in turn (one in memory at a time): loss, generations, metrics.

    `labels` are "base"/"finetuned" (a run) or "model" (a plain model); `eval_set_for(generator)` builds the
    evaluation set from the first model's tokenizer and template. Returns (metrics.json content,
    predictions rows).
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
            rows = [{"index": i, "where": r.where, "reference": ref}
                    for i, (r, ref) in enumerate(zip(answerable, references))]
        pad_id = generator.tokenizer.pad_token_id
        loss = response_loss(generator.model, eval_set.examples, pad_id, eval_config.batch_size, progress=progress)
        prompts, generations = evaluate_generations(generator, answerable, options, eval_config.batch_size, progress)
        scored = score_generations(generations, references)
        for row, prompt, generation, score in zip(rows, prompts, generations, scored):
            row["prompt"] = prompt
            row[label] = {"output": generation.text, "finish_reason": generation.finish_reason,
                          "num_tokens": generation.num_tokens, **score}
        models[label] = model_summary(loss, scored, generations, references, eval_config.bootstrap_samples,
                                      eval_config.seed)
        del generator
        gc.collect()
    metrics = {
        "target": str(target), "source": eval_set.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": len(rows), "n_loss": len(eval_set.examples),
        "scale": "metrics are 0-100; error shares are fractions 0-1",
        "normalization": "exact_match_normalized and token_f1 use SQuAD v1.1 normalization: lowercase, drop "
                         "punctuation and the articles a/an/the, collapse whitespace",
        "repetitive": f"more than {REPETITION_THRESHOLD:.0%} of the words lie in a word {REPETITION_NGRAM}-gram "
                      f"that occurs at least twice",
        "generation": {"max_new_tokens": options.max_new_tokens, "do_sample": options.do_sample,
                       "temperature": options.temperature, "top_p": options.top_p},
        "models": models,
    }
    return metrics, rows


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
             data_config=None, tokenization=None, precision: str = "auto", out_dir=None,
             progress: bool = True) -> dict:
    """Test loss and generation metrics of each model on the run's test split or a data file.

    With `out_dir`, writes `metrics.json` and `predictions.jsonl` there (keeping the other model's results
    from an earlier eval of the same set). Returns the metrics.json content.

    Raises:
        RunError: nothing to evaluate on (a plain model without `data`, a run without a test split).
        DataError: the data file is invalid.
    """
    from tunesmith.config import DataConfig, TokenizationConfig
    from tunesmith.errors import RunError
    from tunesmith.prepare.tokenization import resolve_max_length
    from tunesmith.prepare.manifest import Manifest

    if data is None and paths is None:
        raise RunError(f"{target}: not a run folder, so there is no test split; give a data file with --data FILE")
    if data is None:
        require_test_split(paths)

    def eval_set_for(generator) -> EvalSet:
        if data is None:
            return eval_set_from_run(paths, eval_config.limit)
        tokens = tokenization or TokenizationConfig()
        prepared = paths is not None and paths.manifest.is_file()
        max_length = (Manifest.read(paths.manifest).max_length if prepared
                      else resolve_max_length(tokens, [], generator.context_length))
        return eval_set_from_file(data, data_config or DataConfig(), generator.tokenizer, generator.template,
                                  tokens, int(max_length), eval_config.limit)

    metrics, rows = evaluate_models(target, labels, eval_set_for, eval_config, precision, progress)
    if out_dir is not None:
        metrics, rows = merge_previous(out_dir, metrics, rows)
        write_results(out_dir, metrics, rows)
    return metrics


def evaluate_choices(target: str, labels: Sequence[str], path: str, eval_config, *, precision: str = "auto",
                     out_file=None, progress: bool = True) -> dict:
    """acc and acc_norm of each model on a multiple-choice file, optionally saved as JSON.

    Raises:
        DataError: the file has records that are not multiple-choice questions.
    """
    import gc

    from tunesmith.use.generation import load_for_inference
    from tunesmith.runs import atomic_write_json

    items = load_choice_items(path, eval_config.limit)
    models = {}
    for label in labels:
        generator = load_for_inference(target, "base" if label == "base" else "finetuned", precision=precision)
        models[label] = score_choices(generator.model, generator.tokenizer, items, eval_config.bootstrap_samples,
                                      eval_config.seed, progress)
        del generator
        gc.collect()
    result = {"target": str(target), "source": str(path), "n": len(items),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "method": "lm-evaluation-harness multiple_choice: context 'Question: {q}\\nAnswer:', continuation "
                        "' ' + choice; acc = argmax summed log-likelihood, acc_norm = argmax log-likelihood per "
                        "character of the choice",
              "models": models}
    if out_file is not None:
        atomic_write_json(out_file, result)
    return result
