"""Statistics on hand-made records and lengths: percentiles, truncation cost, duplicates, baked-in templates."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.records import Message, Record
from tunesmith.data.stats import (baked_templates, compute_stats, duplicates, overlap, response_tokens_cut, summarize,
                                  truncation)
from tunesmith.data.text import percentile


def qa(line, prompt, response="r"):
    return Record("f.jsonl", line, "qa", prompt=prompt, response=response)


class TestPercentiles:
    def test_nearest_rank(self):
        values = list(range(1, 101))
        assert [percentile(values, q) for q in (1, 50, 95, 99, 100)] == [1, 50, 95, 99, 100]

    def test_summary(self):
        s = summarize([7, 1, 3, 100, 5])
        assert (s.min, s.median, s.p95, s.p99, s.max, s.mean) == (1, 5.0, 100, 100, 100, 23.2)

    def test_even_count_median_and_empty(self):
        assert summarize([1, 2, 3, 4]).median == 2.5
        assert summarize([]).max == 0


class TestTruncation:
    @pytest.mark.parametrize("prompt,response,side,cut", [
        (10, 5, "left", 0),      # fits
        (20, 5, "left", 0),      # only the prompt is cut
        (10, 30, "left", 20),    # answer alone too long: the prompt keeps 20 // 2 = 10, the answer 10
        (4, 30, "left", 14),     # short prompt is kept whole, answer keeps 16
        (20, 5, "right", 5),     # right cuts the end: the whole answer
        (15, 10, "right", 5),
    ])
    def test_response_tokens_cut(self, prompt, response, side, cut):
        assert response_tokens_cut(prompt, response, 20, side) == cut

    def test_shares(self):
        t = truncation([(5, 5), (30, 10), (10, 40)], max_length=20)
        assert (t.examples_truncated, t.examples_share) == (2, round(2 / 3, 4))
        assert (t.response_tokens_cut, t.response_tokens_total) == (30, 55)
        assert t.response_share_cut == round(30 / 55, 4)
        assert t.examples_without_response == 0

    def test_examples_left_without_response(self):
        assert truncation([(30, 5), (5, 5)], max_length=20, truncation_side="right").examples_without_response == 1


class TestDuplicates:
    def test_exact_and_conflicting(self):
        records = [qa(1, "What is 2+2?", "4"), qa(2, "What is 2+2?", "4"), qa(3, "What is 2+2?", "five"),
                   qa(4, "Capital of France?", "Paris")]
        d = duplicates(records)
        assert d.exact == 1 and d.exact_examples == [["f.jsonl:1", "f.jsonl:2"]]
        assert d.conflicting_prompts == 1 and d.conflicting_examples == [["f.jsonl:1", "f.jsonl:3"]]

    def test_near_duplicates_by_normalization_and_by_shingles(self):
        words = " ".join(f"word{i}" for i in range(40))
        records = [qa(1, f"Describe this: {words}", "ok"),
                   qa(2, f"describe THIS -- {words}!", "ok"),           # same after normalization
                   qa(3, f"Describe this: {words} extra", "ok"),        # one word added at the end of the prompt
                   qa(4, "Something else entirely, about gardening and soil.", "ok")]
        d = duplicates(records)
        assert d.near == 2
        assert [pair[:2] for pair in d.near_examples] == [["f.jsonl:1", "f.jsonl:2"], ["f.jsonl:1", "f.jsonl:3"]]
        assert d.exact == 0

    def test_different_texts_are_not_near(self):
        records = [qa(i, " ".join(f"w{i}x{j}" for j in range(20))) for i in range(50)]
        assert duplicates(records).near == 0

    def test_chinese_is_compared_character_by_character(self):
        # Written without spaces: one `\w+` "word" per sentence would never be a near duplicate of anything.
        sentence = "这款电热水壶的容量是一点七升，烧开一壶水大约需要五分钟，请不要空烧"
        records = [qa(1, f"请介绍一下：{sentence}", "好的"),
                   qa(2, f"请介绍一下：{sentence}。", "好的。"),  # punctuation only: normalized equal
                   qa(3, f"请介绍一下：{sentence}", "好的呀"),  # one character added
                   qa(4, "今天的天气怎么样？北京晴朗，气温二十度左右，适合出门散步", "好的")]
        d = duplicates(records)
        assert d.exact == 0 and d.near == 2
        assert [pair[:2] for pair in d.near_examples] == [["f.jsonl:1", "f.jsonl:2"], ["f.jsonl:1", "f.jsonl:3"]]

    def test_unrelated_chinese_records_are_not_near(self):
        records = [qa(1, "这款电热水壶的容量是一点七升，烧开一壶水大约需要五分钟", "好的"),
                   qa(2, "今天的天气怎么样？北京晴朗，气温二十度左右，适合出门散步", "好的")]
        assert duplicates(records).near == 0

    def test_chat_records_compare_whole_conversations(self):
        chat = Record("f", 1, "messages", messages=(Message("user", "hi"), Message("assistant", "hello")))
        assert duplicates([chat, chat]).exact == 1


class TestBakedTemplates:
    @pytest.mark.parametrize("prompt,marker", [
        ("### Instruction:\nAdd 2 and 2.\n\n### Response:", "### <Section>:"),
        ("### Question: 2+2?\n### Answer:", "### <Section>:"),
        ("<|im_start|>user\nhi<|im_end|>", "<|im_start|>"),
        ("[INST] hi [/INST]", "[INST]"),
        ("Human: hi\n\nAssistant:", "Human:/Assistant:"),
    ])
    def test_markers_are_found(self, prompt, marker):
        found = baked_templates([qa(1, prompt)])
        assert found.records == 1 and marker in found.markers
        assert found.examples[0].startswith("f.jsonl:1: prompt contains")

    def test_plain_prompts_are_clean(self):
        found = baked_templates([qa(1, "What does ### mean in markdown?"), qa(2, "Tell me about humans: who are they?")])
        assert found.records == 0 and found.markers == {}


def test_overlap():
    train = [qa(1, "A", "1"), qa(2, "B", "2")]
    test = [Record("t.jsonl", 1, "qa", prompt="A", response="1"), Record("t.jsonl", 2, "qa", prompt="B", response="x"),
            Record("t.jsonl", 3, "qa", prompt="C", response="3")]
    result = overlap(train, test)
    assert (result.same_prompt, result.same_example) == (2, 1)
    assert result.examples[0] == "t.jsonl:1 has the prompt of f.jsonl:1"


def test_compute_stats_serializes_to_json():
    records = [qa(1, "a", "b"), qa(2, "a", "b"), Record("f.jsonl", 3, "text", text="t")]
    stats = compute_stats(records, [(3, 2), (3, 2), (0, 9)], max_length=8)
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["num_records"] == 3 and data["kinds"] == {"pair": 2, "text": 1}
    assert data["lengths"]["total"]["max"] == 9 and data["truncation"]["examples_truncated"] == 1
    assert data["duplicates"]["exact"] == 1
    assert compute_stats(records, [(1, 1)] * 3).truncation is None


def test_compute_stats_needs_one_length_per_record():
    with pytest.raises(ValueError):
        compute_stats([qa(1, "a")], [])



def test_tool_use_is_counted():
    from tunesmith.data.records import ToolCall

    calls = (ToolCall("c1", "weather", '{"city": "Oslo"}'), ToolCall("c2", "time", "{}"))
    turns = (Message("user", "Oslo?"), Message("assistant", "", calls), Message("tool", "21 C", tool_call_id="c1"),
             Message("tool", "noon", tool_call_id="c2"), Message("assistant", "21 C at noon."))
    records = [Record("f", 1, "messages", messages=turns, tools=({"type": "function"},)),
               Record("f", 2, "qa", prompt="2+2?", response="4")]
    found = compute_stats(records, [(5, 2), (3, 1)]).tool_use
    assert (found.records_with_tools, found.records_with_calls, found.call_turns, found.calls, found.tool_turns) == \
        (1, 1, 1, 2, 2)


MARKER_TEXTS = ["### Instruction:\nx", "###Question :", "<|im_start|>user", "a <|im_end|>", "[INST] hi [/INST]",
                "<<SYS>>", "<</SYS>>", "<|user|>", "<|assistant|>", "<|start_header_id|>", "<|eot_id|>",
                "<start_of_turn>user", "<end_of_turn>", "<|endoftext|>", "<s>", "</s>", "Human: hi",
                "x\nassistant: yes", "HUMAN:", " Human: not at a line start", "plain text", "a < b and c > d",
                "[1] a citation", "# a heading", "### no colon", "Human : spaced", "<S>", "<|IM_START|>", ""]


def test_has_marker_finds_what_one_search_for_every_marker_finds():
    """The bracketed markers are searched for only in texts holding `#`, `<` or `[`; that finds exactly what one
    search with all of them finds."""
    import re

    from tunesmith.data.stats import TEMPLATE_MARKERS, has_marker

    every = re.compile("|".join(f"(?:{p.pattern})" for p in TEMPLATE_MARKERS.values()), re.IGNORECASE | re.MULTILINE)
    texts = MARKER_TEXTS + [f"before {t} after" for t in MARKER_TEXTS] + [f"line\n{t}" for t in MARKER_TEXTS]
    found = [has_marker(t) for t in texts]
    assert found == [every.search(t) is not None for t in texts]
    assert sum(found) > len(texts) / 2 and not all(found)  # both answers occur
