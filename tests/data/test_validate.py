"""load_records: one problem per bad record with file, line and field; auto skips up to 1%, fail lists them all,
skip drops them; grouped problems for inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config import DataConfig
from tunesmith.data import Record, check_record, load_records
from tunesmith.data.records import Message
from tunesmith.data.validate import group_problems, is_small_share, on_error_outcome
from tunesmith.errors import DataError, DataProblem

SHAPES = Path(__file__).parents[2] / "examples" / "shapes"
BROKEN = SHAPES / "broken.jsonl"

EXAMPLES = [("alpaca.jsonl", "alpaca"), ("qa.csv", "qa"), ("prompt_completion.json", "prompt_completion"),
            ("input_output.jsonl", "input_output"), ("messages.jsonl", "messages"), ("sharegpt.json", "sharegpt"),
            ("text.jsonl", "text")]


@pytest.mark.parametrize("name,shape", EXAMPLES)
def test_every_shipped_example_loads_whole(name, shape):
    loaded = load_records(SHAPES / name, DataConfig())
    assert loaded.shape == shape
    assert 8 <= len(loaded.records) <= 20 and loaded.skipped == []
    assert f"{len(loaded.records)} of {len(loaded.records)} records" in loaded.reason
    assert all(r.shape == shape and r.file == str(SHAPES / name) for r in loaded.records)


def test_broken_file_gives_one_message_per_bad_record_with_line_and_field():
    with pytest.raises(DataError) as info:
        load_records(BROKEN, DataConfig())
    problems = info.value.problems
    assert [(p.line, p.field) for p in problems] == [
        (2, None),                    # invalid JSON
        (3, "messages[1].content"),   # missing field
        (4, "messages[1].content"),   # non-string field
        (5, "messages[1]"),           # empty response
        (7, "messages[1].role"),      # unknown role
        (8, "messages"),              # no assistant turn
        (9, None),                    # non-UTF-8 bytes
        (10, None),                   # not an object
        (11, "messages"),             # missing messages list
    ]
    kinds = ["invalid JSON", "missing", "expected a string, got a number", "empty assistant turn", "unknown role",
             "no assistant turn", "UTF-8", "expected a JSON object", "missing"]
    assert all(kind in p.message for kind, p in zip(kinds, problems))
    assert all(p.file == str(BROKEN) for p in problems)
    assert str(info.value).startswith("9 data problems:")


def test_skip_keeps_good_records_and_returns_the_skipped():
    loaded = load_records(BROKEN, DataConfig(on_error="skip"))
    assert [r.line for r in loaded.records] == [1, 6, 12]
    assert len(loaded.skipped) == 9 and loaded.shape == "messages"


def test_fail_lists_the_first_20_and_a_count(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": ""}) + "\n" for i in range(25)))
    with pytest.raises(DataError) as info:
        load_records(path, DataConfig())
    message = str(info.value)
    assert len(info.value.problems) == 25
    assert f"{path}:20: answer: empty" in message and f"{path}:21:" not in message
    assert "... and 5 more problems" in message


def test_a_10mb_record_is_rejected_by_default(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a" * 10_000_000}) + "\n"
                    + json.dumps({"question": "q", "answer": "a"}) + "\n")
    loaded = load_records(path, DataConfig(on_error="skip"))
    assert [r.line for r in loaded.records] == [2]
    assert "max_record_bytes" in loaded.skipped[0].message


def test_only_bad_records_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": 1}\n{oops\n')
    with pytest.raises(DataError, match="2 data problems"):
        load_records(path, DataConfig(on_error="skip"))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_records(path, DataConfig())


class TestCheckRecord:
    @pytest.mark.parametrize("record,field,message", [
        (Record("f", 1, "alpaca", prompt=" ", response="r"), "instruction", "empty"),
        (Record("f", 1, "alpaca", prompt="p", response="\n"), "output", "empty"),
        (Record("f", 1, "text", text=""), "text", "empty"),
        (Record("f", 1, "messages", messages=(Message("user", "u"),)), "messages", "no assistant turn"),
        (Record("f", 1, "messages", messages=(Message("user", "u"), Message("assistant", "a"),
                                              Message("user", "again"))), "messages[2]", "ends with a user turn"),
        (Record("f", 1, "messages", messages=(Message("system", "s"), Message("assistant", "a"))), "messages",
         "no user turn"),
        (Record("f", 1, "sharegpt", messages=(Message("user", "u"), Message("assistant", ""))), "conversations[1]",
         "empty assistant turn"),
    ])
    def test_problems(self, record, field, message):
        (problem,) = check_record(record)
        assert problem.field == field and message in problem.message and problem.line == 1

    @pytest.mark.parametrize("record", [
        Record("f", 1, "qa", prompt="p", response="r"),
        Record("f", 1, "text", text="t"),
        Record("f", 1, "messages", messages=(Message("system", "s"), Message("user", "u"), Message("assistant", "a"))),
    ])
    def test_good_records_pass(self, record):
        assert check_record(record) == []


def write_dirty(path: Path, good: int, bad: int, bad_every: int | None = None) -> Path:
    """`good` question/answer records with `bad` blank ones spread among them."""
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(good)]
    step = bad_every or max(1, good // max(bad, 1))
    for n in range(bad):
        rows.insert(min(len(rows), (n + 1) * step), {"question": "", "answer": ""})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class TestOnErrorAuto:
    def test_one_percent_exactly_is_skipped_and_kept_with_its_raw_row(self, tmp_path):
        path = write_dirty(tmp_path / "d.jsonl", good=99, bad=1)
        loaded = load_records(path, DataConfig())
        assert (len(loaded.records), len(loaded.skipped), loaded.total) == (99, 1, 100)
        (rejected,) = loaded.rejected
        line = loaded.skipped[0].line
        assert rejected.to_dict() == {"where": f"{path}:{line}", "reason": "question: empty; expected the prompt text",
                                      "record": {"question": "", "answer": ""}}

    def test_just_above_one_percent_stops_and_says_why_and_how_to_go_on(self, tmp_path):
        path = write_dirty(tmp_path / "d.jsonl", good=197, bad=2)  # 2 of 199: 1.005%
        with pytest.raises(DataError) as info:
            load_records(path, DataConfig())
        message = str(info.value)
        assert len(info.value.problems) == 2 and message.startswith("2 data problems:")
        assert "2 of 199 records (1.0%) is more than the 1% data.on_error: auto skips" in message
        assert "wrong key mapping" in message and "data.on_error: skip" in message

    def test_skip_takes_any_share_and_fail_none(self, tmp_path):
        path = write_dirty(tmp_path / "d.jsonl", good=10, bad=5)
        assert len(load_records(path, DataConfig(on_error="skip")).skipped) == 5
        one = write_dirty(tmp_path / "one.jsonl", good=999, bad=1)
        with pytest.raises(DataError) as info:
            load_records(one, DataConfig(on_error="fail"))
        assert str(info.value).startswith(f"data error: {one}:")
        assert "data.on_error: fail" in str(info.value) and "data.on_error: skip" in str(info.value)

    def test_unreadable_rows_count_and_are_kept_without_a_record(self, tmp_path):
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(100))
                        + "{oops\n")
        loaded = load_records(path, DataConfig())
        assert loaded.total == 101 and loaded.rejected[0].to_dict()["record"] is None
        assert loaded.rejected[0].to_dict()["where"] == f"{path}:101"

    @pytest.mark.parametrize("invalid,total,small", [(0, 1, True), (1, 100, True), (1, 99, False), (14, 1400, True),
                                                     (15, 1400, False)])
    def test_is_small_share(self, invalid, total, small):
        assert is_small_share(invalid, total) is small


class TestGroupProblems:
    def test_by_kind_most_frequent_first_with_the_first_few_and_numbers_aside(self):
        problems = [DataProblem("f", line, "answer", "empty; expected the answer text") for line in (4, 9, 12, 30, 31)]
        problems += [DataProblem("f", 2, None, "invalid JSON: Expecting ',' delimiter (column 12)"),
                     DataProblem("f", 7, None, "invalid JSON: Expecting ',' delimiter (column 80)")]
        groups = group_problems(sorted(problems, key=lambda p: p.line))
        assert [(g.kind, g.count) for g in groups] == [("answer: empty; expected the answer text", 5),
                                                       ("invalid JSON: Expecting ',' delimiter (column 12)", 2)]
        assert groups[0].examples == ["f:4", "f:9", "f:12"]
        assert groups[1].examples == ["f:2", "f:7: invalid JSON: Expecting ',' delimiter (column 80)"]


def test_on_error_outcome_says_what_training_does_and_the_way_on():
    assert on_error_outcome("auto", 0, 10) == ""
    assert "skips 1 of 1,400 records (0.1%)" in on_error_outcome("auto", 1, 1400)
    assert "rejected.jsonl" in on_error_outcome("auto", 1, 1400)
    assert on_error_outcome("auto", 2, 100).startswith("training stops: 2 of 100 records (2.0%)")
    assert "--on-error skip" in on_error_outcome("fail", 1, 1400)
    assert on_error_outcome("skip", 50, 100).startswith("training skips 50 of 100")


class TestWayOn:
    """The way on is the error's `hint`, printed after the problems, so callers can read it without parsing."""

    def test_a_hint_follows_the_problems_and_none_changes_nothing(self):
        problems = [DataProblem("f", 1, "answer", "empty"), DataProblem("f", 2, None, "invalid JSON")]
        plain = DataError(problems)
        hinted = DataError(problems, hint="check data.shape")
        assert plain.hint is None and str(hinted) == f"{plain}\ncheck data.shape"
        assert str(DataError("no records", file="f", hint="add some")) == "data error: f: no records\nadd some"

    def test_too_many_invalid_records_carry_the_on_error_outcome_as_hint(self, tmp_path):
        path = write_dirty(tmp_path / "d.jsonl", good=197, bad=2)
        with pytest.raises(DataError) as info:
            load_records(path, DataConfig())
        assert info.value.hint == on_error_outcome("auto", 2, 199)
        assert str(info.value).endswith("\n" + info.value.hint)
        assert str(info.value).count(info.value.hint) == 1

    def test_no_valid_record_names_the_key_settings_in_its_hint(self, tmp_path):
        path = tmp_path / "d.jsonl"
        path.write_text('{"question": "q", "answer": 1}\n{oops\n')
        with pytest.raises(DataError) as info:
            load_records(path, DataConfig(on_error="skip"))
        assert info.value.hint.startswith("none of the 2 records is valid") and "data.prompt_key" in info.value.hint
        assert str(info.value).startswith("2 data problems:") and str(info.value).endswith(info.value.hint)
