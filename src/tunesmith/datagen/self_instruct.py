"""Self-instruct (Alpaca's recipe): a teacher grows a handful of human-written seed tasks into many.

Each request shows a few random seeds (they anchor quality) and a few tasks generated earlier (they add
variety) and asks for new tasks in a numbered format. What comes back is parsed strictly and a task is kept
only past the length, unsupported-task, exact-duplicate and ROUGE-L filters against the seeds and everything
kept so far, then appended at once, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Sequence

from tunesmith.config import DataConfig, SelfInstructConfig
from tunesmith.datagen.filters import DuplicateFilter, instruction_problem
from tunesmith.datagen.output import (
    DatagenSummary,
    append_record,
    check_answered,
    progress_bar,
    recording_stop,
    recover_jsonl,
    utc_now,
)
from tunesmith.datagen.parsing import Task, parse_numbered_tasks
from tunesmith.datagen.teachers import Teacher, TeacherFailure, TeacherReply, give_up_after
from tunesmith.errors import DataError


def load_seed_tasks(path: str | Path) -> list[Task]:
    """Seed tasks from Stanford's seed-task JSONL (`instruction` + `instances: [{input, output}]`, the first
    instance is used) or from any file the data layer reads (alpaca, qa, prompt/completion, single-turn chat).

    Raises:
        DataError: the file is unreadable, empty, or holds records that are not instruction/answer pairs.
    """
    from tunesmith.data import as_pair, load_records
    from tunesmith.data.load import read_rows

    path = Path(path)
    rows = read_rows(path)
    if any(r.data is not None and "instances" in r.data for r in rows):
        problems = [r.problem for r in rows if r.problem is not None]
        if problems:
            raise DataError(problems)
        return [_stanford_task(r.data, r.file, r.line) for r in rows]
    tasks = []
    for record in load_records(path, DataConfig(path=str(path))).records:
        try:
            pair = as_pair(record)
        except ValueError as e:
            raise DataError(f"a seed task must be one instruction and its answer: {e}", file=record.file,
                            line=record.line) from None
        tasks.append(Task(pair.prompt, pair.input, pair.response, id=record.where))
    if not tasks:
        raise DataError("no seed tasks", file=str(path))
    return tasks


def _stanford_task(row: dict, file: str, line: int) -> Task:
    """One seed in Stanford's form; its first instance is the example shown to the teacher.

    Raises:
        DataError: no instruction, or no instance with an output (names the file, line and field).
    """
    instruction, instances = row.get("instruction"), row.get("instances")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError("expected a non-empty string", file=file, line=line, field="instruction")
    first = instances[0] if isinstance(instances, list) and instances else None
    if (not isinstance(first, dict) or not isinstance(first.get("output"), str) or not first["output"].strip()
            or not isinstance(first.get("input", ""), str)):
        raise DataError("expected a list of {input, output} objects with a non-empty output string", file=file,
                        line=line, field="instances")
    return Task(instruction.strip(), first.get("input", "").strip(), first["output"].strip(),
                id=str(row.get("id") or f"{Path(file).name}:{line}"))


def format_task(number: int, task: Task) -> str:
    """One task in the numbered format the teacher is asked to continue.

    >>> print(format_task(2, Task("Add the numbers.", "", "5")))
    2. Instruction: Add the numbers.
    2. Input:
    <noinput>
    2. Output:
    5
    """
    return (f"{number}. Instruction: {' '.join(task.instruction.split())}\n{number}. Input:\n"
            f"{task.input or '<noinput>'}\n{number}. Output:\n{task.output}")


def self_instruct_prompt(examples: Sequence[Task], num_tasks: int) -> str:
    """The request for `num_tasks` new tasks, showing `examples` in the numbered format."""
    first = len(examples) + 1
    shown = "\n###\n".join(format_task(i, t) for i, t in enumerate(examples, start=1))
    return (
        f"We are collecting varied tasks to teach a text-only AI assistant to follow instructions. Write "
        f"{num_tasks} new tasks that differ from the examples below in topic, wording and kind.\n\n"
        "Guidelines:\n"
        "- Vary the verbs and the sentence form: mix direct questions with commands.\n"
        "- Vary the kind of task: open questions, explanations, classification, rewriting, summarizing, "
        "extraction, reasoning, brainstorming, short coding tasks.\n"
        "- Every task must be doable by a model that only reads and writes text: nothing that needs images, "
        "sound, files, browsing, or acting in the world.\n"
        "- An instruction is one or two sentences.\n"
        "- Give an input (a passage, a list, a snippet of code...) only when the task needs one; otherwise write "
        "<noinput>. Keep inputs short.\n"
        "- The output is a correct, complete answer of at most about 100 words.\n\n"
        "Use exactly the format of the examples (Instruction, Input, Output lines with the task's number) and "
        "put a line with ### between tasks.\n\n"
        f"###\n{shown}\n###\n\n"
        f"Now write tasks {first} to {first + num_tasks - 1}, starting with \"{first}. Instruction:\"."
    )


def self_instruct(seeds: str | Path, out: str | Path, teacher: Teacher, options: SelfInstructConfig,
                  progress: bool = True) -> DatagenSummary:
    """Grow `out` to `options.num_examples` alpaca records written by the teacher from a few seed tasks.

    Each request shows `seed_examples` random seeds (plus `generated_examples` earlier outputs) and asks for
    `tasks_per_request` new ones; every parsed task passes the length, unsupported-task, exact-duplicate and
    ROUGE-L filters against the seeds and everything kept, then is appended at once. Resumes an existing `out`.

    Output line: `{"instruction", "input", "output", "provenance": {"teacher", "seed_ids", "created"}}`.

    Raises:
        DataError: unreadable seeds, or an `out` that is not a file this generator wrote.
        ConfigError: the teacher rejects the URL, key or model (HTTP 401/403/404).
        TeacherError: requests failed and nothing was produced (the summary is saved first).
    """
    seed_tasks = load_seed_tasks(seeds)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    generated = [_generated_task(r, out, i) for i, r in enumerate(recover_jsonl(out), start=1)]
    target = options.num_examples
    summary = DatagenSummary("self-instruct", str(out), teacher.name, requested=target, existing=len(generated))
    duplicates = DuplicateFilter(options.similarity_threshold, [t.instruction for t in seed_tasks + generated])
    rng = random.Random(options.seed * 1_000_003 + len(generated))  # a resumed run does not replay old prompts
    max_requests = options.max_requests or 4 * math.ceil(target / options.tasks_per_request) + teacher.concurrency
    failures_in_row = 0
    bar = progress_bar(target, len(generated), "example", "self-instruct", progress)
    with recording_stop(summary, out, bar, teacher):
        while len(generated) < target:
            stop = _stop_reason(summary.requests, max_requests, failures_in_row, teacher, target)
            if stop:
                summary.stopped = stop
                break
            wanted = math.ceil((target - len(generated)) / options.tasks_per_request)
            wave = min(teacher.concurrency, wanted, max_requests - summary.requests)
            shown = [_sample_examples(rng, seed_tasks, generated, options) for _ in range(wave)]
            prompts = [self_instruct_prompt(examples, options.tasks_per_request) for examples in shown]
            for index, result in teacher.complete_many(prompts):
                summary.count(result)
                if isinstance(result, TeacherFailure):
                    failures_in_row += 1
                    continue
                failures_in_row = 0
                seed_ids = [t.id for t in shown[index] if t.id]
                for task in _reply_tasks(result, summary):
                    reason = "not_needed" if len(generated) >= target else _drop_reason(task, options, duplicates)
                    if reason:
                        summary.dropped[reason] += 1
                        continue
                    append_record(out, _record(task, teacher.name, seed_ids))
                    generated.append(task)
                    duplicates.add(task.instruction)
                    summary.kept += 1
                    bar.update(1)
    check_answered(summary)
    return summary


def _stop_reason(requests: int, max_requests: int, failures_in_row: int, teacher: Teacher,
                 target: int) -> str | None:
    """Why a run stops before reaching its target (out of requests, or the teacher looks down), or None."""
    if requests >= max_requests:
        return f"max_requests={max_requests} reached before {target} examples"
    if failures_in_row >= give_up_after(teacher):
        return f"gave up after {failures_in_row} failed requests in a row"
    return None


def _reply_tasks(reply: TeacherReply, summary: DatagenSummary) -> list[Task]:
    """The whole tasks of one reply, counting malformed ones and the one a `length` stop cut off as dropped."""
    tasks, malformed = parse_numbered_tasks(reply.text)
    summary.dropped["malformed"] += malformed
    if reply.finish_reason == "length" and tasks and reply.text.rstrip().endswith(tasks[-1].output):
        tasks.pop()  # the answer was cut off by max_tokens inside this task's output
        summary.dropped["truncated"] += 1
    summary.produced += len(tasks)
    return tasks


def _drop_reason(task: Task, options: SelfInstructConfig, duplicates: DuplicateFilter) -> str | None:
    """Why a parsed task is not kept (`duplicate` first, then the cheap filters, then `similar`), or None.

    The ROUGE-L check is the costly one, so it runs only for tasks every other filter let through.
    """
    if duplicates.is_duplicate(task.instruction):
        return "duplicate"
    problem = instruction_problem(task, options)
    if problem is None and duplicates.is_similar(task.instruction):
        return "similar"
    return problem


def _record(task: Task, teacher_name: str, seed_ids: list[str]) -> dict:
    """The alpaca line written for a kept task, with where it came from."""
    return {"instruction": task.instruction, "input": task.input, "output": task.output,
            "provenance": {"teacher": teacher_name, "seed_ids": seed_ids, "created": utc_now()}}


def _generated_task(record: dict, out: Path, line: int) -> Task:
    """A task read back from `out` on resume, so new ones are checked against it.

    Raises:
        DataError: the line is not an alpaca record (not a file self-instruct wrote).
    """
    instruction, output = record.get("instruction"), record.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise DataError("not an alpaca record written by self-instruct (instruction/output); choose another --out",
                        file=str(out), line=line)
    return Task(instruction, str(record.get("input") or ""), output)


def _sample_examples(rng: random.Random, seeds: list[Task], generated: list[Task],
                     options: SelfInstructConfig) -> list[Task]:
    """Which tasks one request shows: mostly human seeds (they anchor quality), plus a few generated ones."""
    examples = rng.sample(seeds, min(options.seed_examples, len(seeds)))
    return examples + rng.sample(generated, min(options.generated_examples, len(generated)))
