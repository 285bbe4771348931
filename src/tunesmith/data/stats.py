"""What a dataset looks like before training on it: lengths, truncation, duplicates, baked-in templates.

Pure functions over canonical records and their token lengths `(prompt_tokens, response_tokens)`; the
lengths are measured elsewhere (`tunesmith.prepare.tokenization.measure_lengths`) so this module never needs a
tokenizer. `compute_stats` returns a `DataStats` that serializes to JSON (`data_stats.json`). Numbers only: the
length histogram is drawn by `tunesmith.report.charts.length_chart`, so the data layer never loads matplotlib.

Percentiles are nearest-rank: p99 is the smallest length that at least 99% of examples fit in, always
a length that occurs in the data, which is what a `max_length` choice needs.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator

from tunesmith.data.lengths import kept_window
from tunesmith.data.records import Record, has_tool_calls, prompt_key
from tunesmith.data.strip import (BOS, EOS, IM_END, IM_START, INST_CLOSE, INST_OPEN, SECTION_NAMES, SYS_OPEN,
                                  Stripped, section)
from tunesmith.data.validate import ProblemGroup
from tunesmith.data.text import percentile, words

EXAMPLES_SHOWN = 5
"""How many example locations each finding keeps (the counts are always complete)."""

DUPLICATES_SCANNED = 50_000
"""Records looked at for duplicates (the first ones), which bounds their memory; other statistics count all."""

NEAR_DUPLICATE_JACCARD = 0.9
"""Word-trigram Jaccard similarity from which two examples count as near duplicates."""

TEMPLATE_MARKERS: dict[str, re.Pattern] = {
    "### <Section>:": re.compile(section(*SECTION_NAMES), re.IGNORECASE),
    "<|im_start|>": re.compile(IM_START),
    "<|im_end|>": re.compile(IM_END),
    "[INST]": re.compile(f"{INST_OPEN}|{INST_CLOSE}"),
    "<<SYS>>": re.compile(SYS_OPEN),
    "<|user|>/<|assistant|>": re.compile(r"<\|(user|assistant|system)\|>"),
    "<|start_header_id|>": re.compile(r"<\|(start_header_id|eot_id|begin_of_text)\|>"),
    "<start_of_turn>": re.compile(r"<(start|end)_of_turn>"),
    "<|endoftext|>": re.compile(re.escape("<|endoftext|>")),
    "<s>/</s>": re.compile(f"{BOS}|{EOS}"),
    "Human:/Assistant:": re.compile(r"^(Human|Assistant):", re.MULTILINE),
}
"""Signs that a prompt was already formatted with some template (it would be templated twice); the forms that
`tunesmith.data.strip` can remove are built from the same atoms."""

LINE_START_MARKERS = ("Human:/Assistant:",)
"""The markers that are plain words at a line's start; every other one holds `#`, `<` or `[`."""

_MARKER_CHARACTERS = "#<["
_BRACKETED_MARKER = re.compile("|".join(f"(?:{p.pattern})" for name, p in TEMPLATE_MARKERS.items()
                                        if name not in LINE_START_MARKERS), re.IGNORECASE | re.MULTILINE)
_LINE_START_MARKER = re.compile("|".join(f"(?:{TEMPLATE_MARKERS[name].pattern})" for name in LINE_START_MARKERS),
                                re.IGNORECASE | re.MULTILINE)


@dataclass
class LengthSummary:
    """Token-length distribution of one part of the examples."""

    min: int
    median: float
    p95: int
    p99: int
    max: int
    mean: float


@dataclass
class Truncation:
    """What cutting every example to `max_length` tokens would cost."""

    max_length: int
    examples_truncated: int
    examples_share: float
    response_tokens_cut: int
    response_tokens_total: int
    response_share_cut: float
    examples_without_response: int
    """Examples with no response token left: they would be dropped, never trained on."""


@dataclass
class Duplicates:
    exact: int
    """Records identical (prompt and answer) to an earlier record."""
    conflicting_prompts: int
    """Prompts that appear with two or more different answers."""
    near: int
    """Records that are near duplicates (not exact) of an earlier record."""
    exact_examples: list[list[str]] = field(default_factory=list)
    conflicting_examples: list[list[str]] = field(default_factory=list)
    near_examples: list[list[str]] = field(default_factory=list)
    records_scanned: int | None = None
    """How many (the first) records were looked at when not all were (`DUPLICATES_SCANNED`); None: all."""


@dataclass
class BakedTemplates:
    records: int
    """Records whose text already contains template markers."""
    markers: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


@dataclass
class ToolUse:
    """How much of a dataset is tool calling (OpenAI's `tools`, `tool_calls` and `tool` turns)."""

    records_with_tools: int = 0
    """Records that offer the assistant functions to call."""
    records_with_calls: int = 0
    """Records with at least one assistant turn that calls a tool."""
    call_turns: int = 0
    """Assistant turns that call tools (one turn may make several calls)."""
    calls: int = 0
    tool_turns: int = 0
    """`tool` turns: a call's result."""

    def add(self, record: Record) -> None:
        """Count one record in (records without tool calls change nothing: `has_tool_calls` finds the others)."""
        call_turns = sum(1 for m in record.messages if m.tool_calls)
        self.records_with_tools += bool(record.tools)
        self.records_with_calls += call_turns > 0
        self.call_turns += call_turns
        self.calls += sum(len(m.tool_calls) for m in record.messages)
        self.tool_turns += sum(1 for m in record.messages if m.role == "tool")


def tool_use(records: Iterable[Record]) -> ToolUse:
    """`ToolUse` of some records.

    >>> tool_use([Record("f", 1, "qa", prompt="2+2?", response="4")])
    ToolUse(records_with_tools=0, records_with_calls=0, call_turns=0, calls=0, tool_turns=0)
    """
    found = ToolUse()
    for record in records:
        found.add(record)
    return found


@dataclass
class DataStats:
    """Everything `tunesmith data inspect` reports about a dataset; `to_dict()` is its JSON form."""

    num_records: int
    shapes: dict[str, int]
    kinds: dict[str, int]
    lengths: dict[str, LengthSummary]
    truncation: Truncation | None
    duplicates: Duplicates
    baked_templates: BakedTemplates
    tool_use: ToolUse = field(default_factory=ToolUse)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataInspection:
    """What `tunesmith data inspect` found: the load result, how lengths were measured, and the statistics."""

    file: str
    shape: str
    reason: str
    skipped: list[str]
    """Every invalid record, as `file:line: field: message` (the statistics are of the valid ones)."""
    model: str
    template: str
    """Template the token lengths were measured with (resolved from `auto`)."""
    max_length_source: str
    """Why `stats.truncation.max_length` is what it is (given, or the p99 of total lengths)."""
    stats: DataStats
    plot: str | None = None
    """Where the length histogram PNG was written, if one was asked for."""
    total_lengths: list[int] = field(default_factory=list, repr=False)
    """Tokens per record (prompt + response), for the histogram; not in `to_dict()`, which stays small."""
    records_read: int = 0
    """Records in the file, valid and invalid."""
    invalid: list[ProblemGroup] = field(default_factory=list)
    """The invalid records grouped by kind of problem, most frequent first."""
    on_error: str = "auto"
    """`data.on_error` the report was made for: what training would do is `invalid_outcome`."""
    invalid_outcome: str = ""
    """What training does with the invalid records under `on_error`, and the way on; empty when there are none."""
    stripped: Stripped | None = None
    """The baked-in template found in the prompts, and whether it was stripped (the statistics are after it)."""

    @property
    def is_clean(self) -> bool:
        """True when no record is invalid, or when the user accepts skipping them (`on_error: skip`)."""
        return not self.invalid or self.on_error == "skip"

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["total_lengths"]
        return data


@dataclass
class Overlap:
    """How much of a test set also appears in a training set."""

    same_prompt: int
    """Test records whose prompt is also a training prompt."""
    same_example: int
    """Test records identical (prompt and answer) to a training record."""
    examples: list[str] = field(default_factory=list)


def summarize(values: list[int]) -> LengthSummary:
    """Min, median, p95, p99, max and mean of token lengths.

    >>> summarize([1, 2, 3, 10])
    LengthSummary(min=1, median=2.5, p95=10, p99=10, max=10, mean=4.0)
    """
    ordered = sorted(values)
    if not ordered:
        return LengthSummary(0, 0.0, 0, 0, 0, 0.0)
    n = len(ordered)
    median = float(ordered[n // 2]) if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return LengthSummary(ordered[0], median, percentile(ordered, 95), percentile(ordered, 99), ordered[-1],
                         round(sum(ordered) / n, 2))


def response_tokens_cut(prompt: int, response: int, max_length: int, truncation_side: str = "left") -> int:
    """Response tokens lost when one example is cut to `max_length`, by the rule tokenization applies.

    The example is read as its prompt tokens, then its response tokens (`tunesmith.data.lengths.kept_window`):
    `left` cuts the prompt first; when the response alone does not fit, the prompt keeps its last
    max_length // 2 tokens and the response's tail goes. `right` cuts the end, which is the response.

    >>> response_tokens_cut(10, 5, max_length=12), response_tokens_cut(10, 20, max_length=12)
    (0, 14)
    """
    start, end = kept_window(prompt + response, prompt, max_length, truncation_side)
    return response - max(0, end - max(start, prompt))


def truncation(lengths: list[tuple[int, int]], max_length: int, truncation_side: str = "left") -> Truncation:
    """What truncating every example to `max_length` costs (see `response_tokens_cut`).

    >>> truncation([(10, 20), (3, 2)], max_length=12).response_tokens_cut
    14
    """
    cuts = [response_tokens_cut(p, r, max_length, truncation_side) for p, r in lengths]
    truncated = sum(p + r > max_length for p, r in lengths)
    cut_total = sum(cuts)
    response_total = sum(r for _, r in lengths)
    no_response = sum(r > 0 and cut >= r for (_, r), cut in zip(lengths, cuts))
    n = len(lengths)
    return Truncation(max_length, truncated, round(truncated / n, 4) if n else 0.0, cut_total, response_total,
                      round(cut_total / response_total, 4) if response_total else 0.0, no_response)


def _answer(record: Record) -> str:
    if record.kind == "text":
        return ""
    if record.kind == "chat":
        return record.messages[-1].content if record.messages else ""
    return record.response


def _shingles(tokens: list[str]) -> frozenset:
    if len(tokens) < 3:
        return frozenset([tuple(tokens)])
    return frozenset(zip(tokens, tokens[1:], tokens[2:]))


def jaccard(a: frozenset, b: frozenset) -> float:
    """Shared share of two sets of shingles.

    >>> jaccard(frozenset({1, 2}), frozenset({2, 3}))
    0.3333333333333333
    """
    if not a and not b:
        return 1.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def duplicates(records: list[Record], bucket_limit: int = 32, window: int = 8) -> Duplicates:
    """Exact duplicates, prompts with conflicting answers, and near duplicates.

    Near duplicates without comparing all pairs (fast for 100k records): examples whose words
    (`tunesmith.data.text.words`: lowercase, punctuation dropped, Chinese and Japanese by character) are
    equal, plus pairs with word-trigram Jaccard >= 0.9 among candidates that share one of four 8-word keys: the
    start or end of the whole example, the end of its prompt, the start of its answer. An edit leaves at least
    one key intact unless it touches every one of those places. Inside a bucket (sorted by length) each example
    meets the next `window` ones; buckets larger than `bucket_limit` (boilerplate that many examples share) are
    skipped, so the cost stays linear.
    """
    where = [r.where for r in records]
    exact_groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    answers: dict[str, dict[str, int]] = defaultdict(dict)
    for i, record in enumerate(records):
        exact_groups[(prompt_key(record), _answer(record))].append(i)
        if record.kind != "text":
            answers[prompt_key(record)].setdefault(_answer(record), i)
    exact = [group for group in exact_groups.values() if len(group) > 1]
    conflicts = [list(by_answer.values()) for by_answer in answers.values() if len(by_answer) > 1]
    near = _near_duplicates(exact_groups, bucket_limit, window)

    def locate(groups: list[list[int]]) -> list[list[str]]:
        return [[where[i] for i in group[:EXAMPLES_SHOWN]] for group in groups[:EXAMPLES_SHOWN]]

    near_pairs = sorted(near.items())
    return Duplicates(
        exact=sum(len(g) - 1 for g in exact), conflicting_prompts=len(conflicts), near=len(near),
        exact_examples=locate(exact), conflicting_examples=locate(conflicts),
        near_examples=[[where[first], where[later], f"{similarity:.2f}"]
                       for later, (first, similarity) in near_pairs[:EXAMPLES_SHOWN]])


def _near_duplicates(exact_groups: dict[tuple[str, str], list[int]], bucket_limit: int,
                     window: int) -> dict[int, tuple[int, float]]:
    """{later index: (earlier index, similarity)} over the first record of each exact group (see `duplicates`)."""
    near: dict[int, tuple[int, float]] = {}
    by_normal: dict[str, int] = {}
    tokens: dict[int, list[str]] = {}
    buckets: dict[tuple[int, str], list[int]] = defaultdict(list)
    for (prompt, answer), group in exact_groups.items():
        i = group[0]
        prompt_words, answer_words = words(prompt), words(answer)
        tokens[i] = prompt_words + answer_words
        first = by_normal.setdefault(" ".join(tokens[i]), i)
        if first != i:
            near[i] = (first, 1.0)
        elif len(tokens[i]) >= 4:
            for kind, key in enumerate((tokens[i][:8], tokens[i][-8:], prompt_words[-8:], answer_words[:8])):
                if key:
                    buckets[(kind, " ".join(key))].append(i)
    shingles: dict[int, frozenset] = {}
    for members in buckets.values():
        if not 2 <= len(members) <= bucket_limit:
            continue
        members.sort(key=lambda i: len(tokens[i]))
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1: a_pos + 1 + window]:
                if len(tokens[a]) < NEAR_DUPLICATE_JACCARD * len(tokens[b]):
                    break  # sorted by length: every later one is even longer
                later, earlier = max(a, b), min(a, b)
                if later in near:
                    continue
                for i in (a, b):
                    if i not in shingles:
                        shingles[i] = _shingles(tokens[i])
                similarity = jaccard(shingles[a], shingles[b])
                if similarity >= NEAR_DUPLICATE_JACCARD:
                    near[later] = (earlier, similarity)
    return near


def _texts_by_field(record: Record) -> list[tuple[str, str]]:
    if record.kind == "text":
        return [("text", record.text or "")]
    if record.kind == "chat":
        return [(f"messages[{i}]", m.content) for i, m in enumerate(record.messages)]
    return [("system", record.system or ""), ("prompt", record.prompt), ("input", record.input),
            ("response", record.response)]


def has_marker(text: str) -> bool:
    """Whether a text holds any of the `TEMPLATE_MARKERS`: the bracketed ones searched for only when the text has
    one of their characters (Python's `re` walks a many-branched pattern at ~13 ns a character, `in` at ~1: prepare
    asks this of every text of a million records).

    >>> has_marker("### Question: 2+2?"), has_marker("What does ### mean?"), has_marker("x\nhuman: hi")
    (True, False, True)
    """
    return ((any(c in text for c in _MARKER_CHARACTERS) and _BRACKETED_MARKER.search(text) is not None)
            or _LINE_START_MARKER.search(text) is not None)


def is_marked(record: Record) -> bool:
    """Whether any text of a record holds a template marker: the records `baked_templates` would count are among
    these, so a caller that knows them (prepare flags each record as it tokenizes) passes only those."""
    return any(has_marker(text) for _, text in _texts_by_field(record))


def baked_templates(records: Iterable[Record]) -> BakedTemplates:
    """Records whose text already holds template markers such as `### Instruction:` or `<|im_start|>`.

    >>> baked_templates([Record("f", 1, "qa", prompt="### Question: 2+2?", response="4")]).examples
    ["f:1: prompt contains '### Question:'"]
    """
    markers: Counter = Counter()
    count = 0
    examples = []
    for record in records:
        found = False
        for field_name, text in _texts_by_field(record):
            if not has_marker(text):
                continue
            for name, pattern in TEMPLATE_MARKERS.items():
                match = pattern.search(text)
                if match:
                    markers[name] += 1
                    found = True
                    if len(examples) < EXAMPLES_SHOWN:
                        examples.append(f"{record.where}: {field_name} contains {match.group(0).strip()!r}")
        count += found
    return BakedTemplates(count, dict(markers.most_common()), examples)


def compute_stats(records: Iterable[Record], lengths: list[tuple[int, int]], max_length: int | None = None,
                  truncation_side: str = "left") -> DataStats:
    """All statistics of a dataset; `lengths[i]` is `(prompt_tokens, response_tokens)` of the i-th record.

    `records` is read once, so it may be a stream; duplicates are looked for among the first
    `DUPLICATES_SCANNED` records (`duplicates.scanned` says how many), which bounds their memory.

    Raises:
        ValueError: `lengths` does not have one entry per record (a programming error, not a user one).
    """
    shapes, kinds, scanned, tools = Counter(), Counter(), [], ToolUse()

    def counted() -> Iterator[Record]:
        for record in records:
            shapes[record.shape] += 1
            kinds[record.kind] += 1
            if len(scanned) < DUPLICATES_SCANNED:
                scanned.append(record)
            if has_tool_calls(record):
                tools.add(record)
            yield record

    baked = baked_templates(counted())
    count = sum(shapes.values())
    if len(lengths) != count:
        raise ValueError(f"{len(lengths)} lengths for {count} records")
    return stats_from_parts(dict(shapes), dict(kinds), lengths, scanned, baked, tools, max_length, truncation_side)


def stats_from_parts(shapes: dict[str, int], kinds: dict[str, int], lengths: list[tuple[int, int]],
                     scanned: list[Record], baked: BakedTemplates, tools: ToolUse, max_length: int | None = None,
                     truncation_side: str = "left") -> DataStats:
    """`compute_stats` from what it counts on the way: records per shape and kind (in the order first seen), the
    lengths, the first `DUPLICATES_SCANNED` records, `baked_templates` and `tool_use` of them all. A caller that
    holds these without the records (prepare keeps a few numbers per record) reads back only the records it needs."""
    count = len(lengths)
    return DataStats(
        num_records=count,
        shapes=shapes,
        kinds=kinds,
        lengths={"prompt": summarize([p for p, _ in lengths]), "response": summarize([r for _, r in lengths]),
                 "total": summarize([p + r for p, r in lengths])},
        truncation=truncation(lengths, max_length, truncation_side) if max_length else None,
        duplicates=replace(duplicates(scanned), records_scanned=len(scanned) if count > len(scanned) else None),
        baked_templates=baked, tool_use=tools)


def overlap(train_records: Iterable[Record], test_records: list[Record]) -> Overlap:
    """Test records whose prompt (or whole example) also occurs in training: their scores would flatter.

    The training records are read once (a stream will do); only the test side is held. Training records whose
    prompt no test record has change nothing, so a caller may pass only the others (prepare does, by split key).

    >>> a, b = Record("t", 1, "qa", prompt="Q", response="A"), Record("s", 1, "qa", prompt="Q", response="B")
    >>> overlap([a], [b])
    Overlap(same_prompt=1, same_example=0, examples=['s:1 has the prompt of t:1'])
    """
    test_prompts = {prompt_key(r) for r in test_records}
    test_examples = {(prompt_key(r), _answer(r)) for r in test_records}
    first_match: dict[str, Record] = {}
    train_examples = set()
    for record in train_records:
        key = prompt_key(record)
        if key in test_prompts:
            first_match.setdefault(key, record)
            if (key, _answer(record)) in test_examples:
                train_examples.add((key, _answer(record)))
    same_prompt = same_example = 0
    examples = []
    for record in test_records:
        match = first_match.get(prompt_key(record))
        if match is None:
            continue
        same_prompt += 1
        same_example += (prompt_key(record), _answer(record)) in train_examples
        if len(examples) < EXAMPLES_SHOWN:
            examples.append(f"{record.where} has the prompt of {match.where}")
    return Overlap(same_prompt, same_example, examples)
