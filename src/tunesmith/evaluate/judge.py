"""An LLM judge: each test answer graded correct / partly / wrong against its reference, with a short reason.

Word-overlap metrics cannot tell a right fact in other words from a wrong fact in the right words; a judge
can. The judge is any `Teacher` (`tunesmith.datagen.teachers`: an OpenAI-compatible endpoint, `tunesmith serve`
included, called with retries, timeouts and a bounded answer length). Evaluation sits below datagen, so the api
builds the teacher and hands it in here.

A verdict is never a crash: a reply that names no grade, or a request that failed after every retry, is
recorded as `unknown` with the raw reply or the failure. Verdicts are cached in a JSONL file keyed by the judge
and the whole judging prompt (question, reference, answer), so a rerun asks only about answers not yet graded;
unknown ones are asked again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

GRADES = ("correct", "partly", "wrong")
UNKNOWN = "unknown"

JUDGE_PROMPT = """You grade an answer to a question against the reference answer.

Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Grade the answer's content, not its wording or style: "correct" if it gives the reference's facts, "partly" \
if it gives some of them or adds wrong ones, "wrong" if it misses or contradicts them.
Reply with one line of JSON and nothing else: {{"grade": "correct" or "partly" or "wrong", "reason": "at most \
twenty words"}}"""

MAX_REASON_CHARS = 300
"""Longer reasons are cut: the report shows one line per answer."""
RAW_KEPT_CHARS = 500
"""How much of an unparseable reply is kept for the report."""


@dataclass(frozen=True)
class Verdict:
    """One answer's grade, the judge's reason, and (for `unknown`) the raw reply or why none came."""

    grade: str
    reason: str
    raw: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v or k != "raw"}


def judge_prompt(question: str, reference: str, answer: str) -> str:
    """The request one answer is graded by."""
    return JUDGE_PROMPT.format(question=question.strip(), reference=reference.strip(),
                               answer=answer.strip() or "(no answer)")


_GRADE_WORDS = {"correct": "correct", "right": "correct", "partly": "partly", "partial": "partly",
                "partially": "partly", "partially correct": "partly", "partly correct": "partly",
                "wrong": "wrong", "incorrect": "wrong"}
_GRADE_FIELD = re.compile(r"grade\W{0,4}(partially correct|partly correct|partially|partial|partly|incorrect|"
                          r"correct|wrong|right)\b", re.IGNORECASE)
_REASON_FIELD = re.compile(r"reason\W{0,4}(.+)", re.IGNORECASE | re.DOTALL)
_FIRST_GRADE = re.compile(r"^\W*(partially correct|partly correct|partially|partly|incorrect|correct|wrong)\b\W*(.*)",
                          re.IGNORECASE | re.DOTALL)


def _json_object(text: str) -> dict | None:
    """The first JSON object in a reply (teachers wrap JSON in prose and code fences)."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _clean_reason(text: str) -> str:
    return " ".join(str(text).strip().strip('"').split())[:MAX_REASON_CHARS]


def parse_verdict(text: str) -> Verdict:
    """The grade and reason in a judge's reply: its JSON, a `grade: ...` line, or a reply that starts with a grade.

    >>> parse_verdict('```json\\n{"grade": "Partly", "reason": "the price is right, the size is not"}\\n```')
    Verdict(grade='partly', reason='the price is right, the size is not', raw='')
    >>> parse_verdict("Incorrect. It names the kettle's volume.")
    Verdict(grade='wrong', reason="It names the kettle's volume.", raw='')
    >>> parse_verdict("I cannot tell.").grade
    'unknown'
    """
    data = _json_object(text)
    if data is not None:
        grade = _GRADE_WORDS.get(str(data.get("grade", "")).strip().lower())
        if grade:
            return Verdict(grade, _clean_reason(data.get("reason") or ""))
    field = _GRADE_FIELD.search(text)
    if field:
        reason = _REASON_FIELD.search(text[field.end():])
        return Verdict(_GRADE_WORDS[field.group(1).lower()], _clean_reason(reason.group(1) if reason else ""))
    first = _FIRST_GRADE.match(text)
    if first:
        return Verdict(_GRADE_WORDS[first.group(1).lower()], _clean_reason(first.group(2)))
    return Verdict(UNKNOWN, "the reply names no grade", text[:RAW_KEPT_CHARS])


def cache_key(judge_name: str, prompt: str) -> str:
    """What a verdict is cached under: the judge and the whole prompt (question, reference and answer)."""
    return hashlib.sha256(f"{judge_name}\0{prompt}".encode("utf-8")).hexdigest()


def read_cache(path: Path | None) -> dict[str, Verdict]:
    """Cached verdicts by key; a missing file is an empty cache, a torn last line is ignored."""
    from tunesmith.runs import read_jsonl

    if path is None:
        return {}
    return {row["key"]: Verdict(row["grade"], row.get("reason", "")) for row in read_jsonl(path)
            if isinstance(row.get("key"), str) and row.get("grade") in GRADES}


def judge_answers(judge, questions: Sequence[str], references: Sequence[str], answers: Sequence[str],
                  cache_file: Path | None = None) -> tuple[list[Verdict], dict]:
    """A verdict for each answer (cached ones reused, the rest asked of `judge` concurrently) and counts.

    `judge` is a `Teacher`. A request the endpoint refuses for good (a wrong key: ConfigError) leaves that and
    the remaining answers `unknown`, with the refusal as their reason, and the counts name it.
    Returns (verdicts in answer order, {"judge", "asked", "cached", "failed", "error"?}).
    """
    from tunesmith.errors import ConfigError
    from tunesmith.runs import append_jsonl

    prompts = [judge_prompt(q, r, a) for q, r, a in zip(questions, references, answers)]
    keys = [cache_key(judge.name, p) for p in prompts]
    cached = read_cache(cache_file)
    verdicts: list[Verdict | None] = [cached.get(k) for k in keys]
    todo = [i for i, v in enumerate(verdicts) if v is None]
    counts = {"judge": judge.name, "asked": len(todo), "cached": len(keys) - len(todo), "failed": 0}
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    try:
        for offset, result in judge.complete_many([prompts[i] for i in todo]):
            index = todo[offset]
            if not isinstance(getattr(result, "text", None), str):  # a TeacherFailure: every retry failed
                counts["failed"] += 1
                verdicts[index] = Verdict(UNKNOWN, "no answer from the judge", result.reason)
                continue
            verdicts[index] = parse_verdict(result.text)
            if verdicts[index].grade != UNKNOWN and cache_file is not None:
                append_jsonl(cache_file, {"key": keys[index], "judge": judge.name, **verdicts[index].to_dict()})
    except ConfigError as e:
        counts["error"] = str(e)
    missing = [i for i, v in enumerate(verdicts) if v is None]
    for i in missing:
        verdicts[i] = Verdict(UNKNOWN, "not graded: the judge refused the requests", counts.get("error", ""))
    return verdicts, counts


def grade_shares(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Share (0-1) of answers in each grade, unknown included.

    >>> grade_shares([Verdict("correct", ""), Verdict("wrong", ""), Verdict("correct", ""), Verdict("unknown", "")])
    {'correct': 0.5, 'partly': 0.0, 'wrong': 0.25, 'unknown': 0.25}
    """
    n = len(verdicts)
    return {grade: (sum(v.grade == grade for v in verdicts) / n if n else 0.0) for grade in (*GRADES, UNKNOWN)}


def judge_rows(judge, rows: list[dict], labels: Sequence[str], cache_file: Path | None = None) -> dict:
    """Grade every model's answers in predictions rows (each row gains `<label>.judge`); returns each label's
    summary for metrics.json: grade shares, plus how many verdicts were asked, cached or failed.

    Rows need `question`, `reference` and `<label>.output` (as `evaluate_models` writes them).
    """
    summaries = {}
    for label in labels:
        graded = [row for row in rows if label in row]
        verdicts, counts = judge_answers(judge, [r.get("question", r.get("prompt", "")) for r in graded],
                                         [r["reference"] for r in graded], [r[label]["output"] for r in graded],
                                         cache_file)
        for row, verdict in zip(graded, verdicts):
            row[label]["judge"] = verdict.to_dict()
        summaries[label] = {**grade_shares(verdicts), "n": len(verdicts), **counts}
    return summaries
