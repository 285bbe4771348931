"""Question/answer pairs from documents: the teacher writes pairs for each chunk, and may grade them.

Every pair must be answerable from its chunk alone, so each request shows one chunk; with grading, a second
request asks the teacher which of its pairs the chunk really supports. Pairs are appended a chunk at a time,
so a rerun skips the chunks already in the output and asks only for the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tunesmith.config import FromDocsConfig
from tunesmith.datagen.documents import Chunk, collect_chunks
from tunesmith.datagen.filters import DuplicateFilter
from tunesmith.datagen.output import (
    DatagenSummary,
    append_record,
    check_answered,
    progress_bar,
    recording_stop,
    recover_jsonl,
    truncate_lines,
    utc_now,
)
from tunesmith.datagen.parsing import parse_grades, parse_qa_pairs
from tunesmith.datagen.teachers import Teacher, TeacherFailure, TeacherReply, give_up_after
from tunesmith.errors import DataError

QAPair = tuple[str, str]
"""(question, answer) as the teacher wrote them."""


def qa_prompt(chunk: Chunk, count: int) -> str:
    """The request for `count` question/answer pairs answerable from one chunk alone, as JSON."""
    return (
        f"Below is a passage from the document \"{chunk.source}\". Write {count} question-and-answer pairs about "
        "it for training a helpful assistant.\n\n"
        "Rules:\n"
        "- Each question must be answerable from this passage alone, and make sense to someone who has not "
        "seen it (name the subject; never say \"the passage\" or \"the text\").\n"
        "- Each answer must be correct according to the passage, complete, and one to three sentences.\n"
        "- Ask about different facts; do not repeat a question in other words.\n\n"
        f"Passage:\n\"\"\"\n{chunk.text}\n\"\"\"\n\n"
        'Reply with JSON only: a list of objects with string fields "question" and "answer".'
    )


def grade_prompt(chunk: Chunk, pairs: Sequence[QAPair]) -> str:
    """The request asking whether each pair is fully supported by its chunk."""
    listed = "\n".join(f"{i}. Question: {q}\n   Answer: {a}" for i, (q, a) in enumerate(pairs, start=1))
    return (
        "Check question-and-answer pairs against a passage. A pair is grounded when the passage alone states "
        "everything the answer says and the answer really answers the question.\n\n"
        f"Passage:\n\"\"\"\n{chunk.text}\n\"\"\"\n\nPairs:\n{listed}\n\n"
        'Reply with JSON only: a list with one object per pair, {"pair": <number>, "grounded": true or false}.'
    )


def _complete_chunks(path: Path, records: list[dict]) -> list[dict]:
    """Drop the last chunk's records when a crash cut its group short, so a rerun redoes it whole.

    A chunk's pairs are appended one after another, so only the final group can be incomplete; each record
    says how many pairs its chunk kept (`provenance.pairs_in_chunk`).
    """
    if not records:
        return records
    last = records[-1].get("chunk_id")
    group = 0
    while group < len(records) and records[-1 - group].get("chunk_id") == last:
        group += 1
    expected = (records[-1].get("provenance") or {}).get("pairs_in_chunk")
    if isinstance(expected, int) and group < expected:
        truncate_lines(path, len(records) - group)
        return records[:-group]
    return records



def qa_from_docs(docs: str | Path, out: str | Path, teacher: Teacher, options: FromDocsConfig,
                 progress: bool = True) -> DatagenSummary:
    """Question/answer pairs for every chunk of the documents under `docs`, appended to `out` (qa JSONL).

    Chunks already in `out` are skipped, so a rerun asks only for what is missing (chunks whose requests
    failed or gave no usable pair are asked again). Questions near-duplicating a kept one (ROUGE-L) are
    dropped; with `options.grade` a second request per chunk asks the teacher which pairs the chunk supports,
    and only those are kept.

    Output line: `{"question", "answer", "source", "chunk_id", "provenance": {"teacher", "created", "pair",
    "pairs_in_chunk"}}`.

    Raises:
        DataError: no readable documents, or an `out` that is not a file this generator wrote.
        ConfigError: the teacher rejects the URL, key or model (HTTP 401/403/404).
        TeacherError: requests failed and nothing was produced (the summary is saved first).
    """
    chunks = collect_chunks(docs, options.chunk_tokens)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = _complete_chunks(out, recover_jsonl(out))
    questions = _written_questions(existing, out)
    done = {r["chunk_id"] for r in existing}
    todo = [c for c in chunks if c.id not in done]
    summary = DatagenSummary("from-docs", str(out), teacher.name, requested=len(todo) * options.per_chunk,
                             existing=len(existing),
                             details={"chunks": len(chunks), "chunks_done_before": len(chunks) - len(todo),
                                      "chunks_failed": 0})
    duplicates = DuplicateFilter(options.similarity_threshold, questions)
    failures_in_row = 0
    bar = progress_bar(len(chunks), len(chunks) - len(todo), "chunk", "from-docs", progress)
    with recording_stop(summary, out, bar, teacher):
        for start in range(0, len(todo), teacher.concurrency):
            if failures_in_row >= give_up_after(teacher):
                summary.stopped = f"gave up after {failures_in_row} failed requests in a row"
                break
            wave = todo[start:start + teacher.concurrency]
            candidates, failures_in_row = _ask_pairs(wave, teacher, options, summary, failures_in_row)
            verdicts = _grade(wave, candidates, teacher, summary) if options.grade else {}
            for index, chunk in enumerate(wave):
                if index not in candidates or (options.grade and index not in verdicts):
                    summary.details["chunks_failed"] += 1
                else:
                    kept = _keep_pairs(candidates[index], verdicts.get(index), options, duplicates, summary)
                    _append_pairs(out, chunk, kept, teacher.name)
                    summary.kept += len(kept)
                bar.update(1)
    check_answered(summary)
    return summary


def _written_questions(records: list[dict], out: Path) -> list[str]:
    """The questions already in `out`, which new ones must not duplicate.

    Raises:
        DataError: a line is not a qa record with a chunk id (not a file from-docs wrote).
    """
    questions = []
    for line, record in enumerate(records, start=1):
        if not isinstance(record.get("question"), str) or not isinstance(record.get("chunk_id"), str):
            raise DataError("not a qa record written by from-docs (question/chunk_id); choose another --out",
                            file=str(out), line=line)
        questions.append(record["question"])
    return questions


def _ask_pairs(wave: list[Chunk], teacher: Teacher, options: FromDocsConfig, summary: DatagenSummary,
               failures_in_row: int) -> tuple[dict[int, list[QAPair]], int]:
    """The parsed pairs per chunk index of one wave, and the count of failed requests in a row after it.

    Chunks whose request failed are absent, so the caller counts them as failed and a rerun asks again.
    """
    candidates: dict[int, list[QAPair]] = {}
    for index, result in teacher.complete_many([qa_prompt(c, options.per_chunk) for c in wave]):
        summary.count(result)
        failures_in_row = failures_in_row + 1 if isinstance(result, TeacherFailure) else 0
        if isinstance(result, TeacherReply):
            pairs, malformed = parse_qa_pairs(result.text)
            summary.dropped["malformed"] += malformed
            summary.produced += len(pairs)
            candidates[index] = pairs
    return candidates, failures_in_row


def _grade(wave: list[Chunk], candidates: dict[int, list[QAPair]], teacher: Teacher,
           summary: DatagenSummary) -> dict[int, list[bool | None]]:
    """The teacher's grounded verdicts per chunk index; chunks whose grading request failed are absent."""
    graded = [i for i in sorted(candidates) if candidates[i]]
    verdicts: dict[int, list[bool | None]] = {i: [] for i in candidates if not candidates[i]}
    prompts = [grade_prompt(wave[i], candidates[i]) for i in graded]
    for position, result in teacher.complete_many(prompts):
        summary.count(result)
        if isinstance(result, TeacherReply):
            index = graded[position]
            verdicts[index] = parse_grades(result.text, len(candidates[index]))
    return verdicts


def _keep_pairs(pairs: list[QAPair], grades: list[bool | None] | None, options: FromDocsConfig,
                duplicates: DuplicateFilter, summary: DatagenSummary) -> list[QAPair]:
    """The pairs of one chunk that pass grading and the duplicate checks, at most `per_chunk` of them.

    Each dropped pair is counted under its reason; kept questions join `duplicates` at once, so two near
    copies inside one reply do not both survive.
    """
    kept: list[QAPair] = []
    for (question, answer), grounded in zip(pairs, grades or [None] * len(pairs)):
        reason = None
        if options.grade and grounded is not True:
            reason = "ungraded" if grounded is None else "not_grounded"
        elif duplicates.is_duplicate(question):
            reason = "duplicate"
        elif duplicates.is_similar(question):
            reason = "similar"
        elif len(kept) == options.per_chunk:
            reason = "extra"  # more good pairs than asked for: the first ones are kept
        if reason:
            summary.dropped[reason] += 1
            continue
        kept.append((question, answer))
        duplicates.add(question)
    return kept


def _append_pairs(out: Path, chunk: Chunk, kept: list[QAPair], teacher_name: str) -> None:
    """Append one chunk's kept pairs; each says how many its chunk has, so resume can spot a cut-short group."""
    for number, (question, answer) in enumerate(kept, start=1):
        append_record(out, {"question": question, "answer": answer, "source": chunk.source, "chunk_id": chunk.id,
                           "provenance": {"teacher": teacher_name, "created": utc_now(), "pair": number,
                                          "pairs_in_chunk": len(kept)}})
