"""Prepare's `data_stats.json` reads back only the records that can change a figure, and says exactly what
`compute_stats` and `overlap` say over every record read back."""

import json
from dataclasses import asdict

import numpy as np

from tunesmith.config import load_config
from tunesmith.data import stats as data_stats
from tunesmith.data.sources import StripTally, source_list
from tunesmith.data.stats import compute_stats, overlap
from tunesmith.prepare import pipeline
from tunesmith.prepare.spool import iter_records, windows

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_statistics_equal_the_pass_over_every_record(tmp_path, tokenizer, monkeypatch):
    """Three sources of three kinds (so shapes and kinds have an order), tool calls, baked markers, duplicates past
    a small scan cap, test-file prompts that training has (overlap, with one whole example shared) and examples
    dropped for length on both sides."""
    monkeypatch.setattr(data_stats, "DUPLICATES_SCANNED", 25)
    qa = [{"question": f"Question {i % 30}: how many {'long ' * (40 if i % 17 == 0 else 0)}kettles?"
           + (" ### Answer:" if i % 9 == 0 else ""), "answer": f"{i % 4} kettles."} for i in range(80)]
    texts = [{"text": f"Plain text {i} <|im_start|>" if i % 5 == 0 else f"Plain text {i}"} for i in range(30)]
    test = [{"question": "Question 3: how many kettles?", "answer": "3 kettles."},
            {"question": "Question 4: how many kettles?", "answer": "no answer like it"},
            {"question": "A question of its own?", "answer": "Yes."},
            {"question": "A question far too long " + "to answer " * 30, "answer": "Cut."}]
    chats = [{"messages": [{"role": "user", "content": f"Hello {i}"}, {"role": "assistant", "content": "Hi."}]}
             if i % 3 else {"tools": [WEATHER], "messages": [
                 {"role": "user", "content": f"Weather in city {i}?"},
                 {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                     "name": "get_weather", "arguments": json.dumps({"city": f"city {i}"})}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}'},
                 {"role": "assistant", "content": "It is 21 C."}]} for i in range(12)]
    sources = (f"[{{path: {_write(tmp_path / 'qa.jsonl', qa)}, test_path: {_write(tmp_path / 'test.jsonl', test)}}}, "
               f"{{path: {_write(tmp_path / 'text.jsonl', texts)}}}, "
               f"{{path: {_write(tmp_path / 'chat.jsonl', chats)}}}]")
    config = load_config(None, [f"data.sources={sources}", "template.name=chat", "data.strip_template=false",
                                "split.test_size=0.1", "tokenization.truncation_side=right"])
    scans = [pipeline._scan(s, config.data) for s in source_list(config.data)]
    spool = pipeline._tokenize(tmp_path / "spool.arrow", scans, False, [StripTally() for _ in scans], tokenizer,
                               config.template, config.tokenization, config.split.seed)
    table, max_length = spool.table(), 64
    cuts = windows(spool, table, max_length, config.tokenization)
    chosen = pipeline.assign_rows(spool, cuts.kept, source_list(config.data), config.split)

    found = pipeline.data_statistics(spool, table, chosen, source_list(config.data), config.tokenization, max_length)

    train_rows, test_rows = np.flatnonzero(~chosen.is_test), np.flatnonzero(chosen.is_test)
    order = np.concatenate([train_rows, test_rows])
    lengths = list(zip(spool.prompt_tokens[order].tolist(), spool.response_tokens[order].tolist()))
    expected = compute_stats(iter_records(table, order), lengths, max_length, "right").to_dict()
    expected["overlap"] = asdict(overlap(iter_records(table, train_rows), list(iter_records(table, test_rows))))
    assert {k: v for k, v in found.items() if k != "sources"} == expected
    assert len(found["shapes"]) == 3 and list(found["kinds"]) == ["pair", "text", "chat"]
    assert found["tool_use"] == {"records_with_tools": 4, "records_with_calls": 4, "call_turns": 4, "calls": 4,
                                 "tool_turns": 4}
    assert found["baked_templates"]["records"] > 0 and found["duplicates"]["records_scanned"] == 25
    assert (found["overlap"]["same_prompt"], found["overlap"]["same_example"]) == (2, 1)
    assert np.count_nonzero(~cuts.kept[train_rows]) and np.count_nonzero(~cuts.kept[test_rows])
