"""Fuzzing the loaders and converters (issue 8): whatever bytes or rows come in, the outcome is records or a
DataError / DataProblem that names the file and line; never another exception, never a traceback for the user.

The default run stays around ten seconds; `pytest -m slow` runs the same properties on 10,000 examples.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.config import DataConfig
from tunesmith.data import check_record, columns_for, load_records
from tunesmith.data.load import read_rows
from tunesmith.data.records import Record, record_to_dict
from tunesmith.data.shapes import CONVERTERS, convert
from tunesmith.data.validate import LoadedData
from tunesmith.errors import DataError

KEYS = ["instruction", "input", "output", "question", "answer", "prompt", "completion", "messages",
        "conversations", "text", "system", "role", "content", "from", "value", "data"]
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", "", "USER"]

# Any code point, lone surrogates included (legal in JSON as escapes, never valid text), and the usual suspects.
any_text = st.one_of(st.text(max_size=30), st.text(st.characters(exclude_categories=()), max_size=30),
                     st.text(st.sampled_from(["\ud800", "\udce9", "\x00", "\ufeff", "\r", "\n", "é", "😀", " "]),
                             max_size=6))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text,
                    st.sampled_from(ROLES))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
turn = st.dictionaries(st.sampled_from(["role", "content", "from", "value", "name"]),
                       st.one_of(st.sampled_from(ROLES), scalars), max_size=4)
values = st.recursive(st.one_of(scalars, st.lists(turn, max_size=4)),
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(keys, inner, max_size=4)),
                      max_leaves=12)
shaped = st.one_of(
    st.fixed_dictionaries({"instruction": any_text, "output": any_text}, optional={"input": values}),
    st.fixed_dictionaries({"question": any_text, "answer": values}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES), "content": any_text}), max_size=4)}),
    st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries(
        {"from": st.sampled_from(ROLES), "value": any_text}), max_size=4)}),
    st.fixed_dictionaries({"text": any_text}))
"""Rows close to a real shape, so conversion gets past the first missing key."""
rows = st.one_of(shaped, st.dictionaries(keys, values, max_size=6))


@st.composite
def files(draw):
    """File bytes: JSON rows mangled by BOMs, CRLF, NUL bytes, invalid UTF-8, deep nesting, truncation."""
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv"]))
    items = draw(st.lists(st.one_of(rows, values), max_size=6))
    if suffix == ".jsonl":
        lines = [json.dumps(item, ensure_ascii=draw(st.booleans())) for item in items]
        text = "\n".join(lines).encode("utf-8", errors="surrogatepass")
    elif suffix == ".json":
        wrap = draw(st.booleans())
        text = json.dumps({"data": items} if wrap else items, indent=draw(st.sampled_from([None, 2])),
                          ensure_ascii=draw(st.booleans())).encode("utf-8", errors="surrogatepass")
    else:
        header = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4))
        cells = draw(st.lists(st.lists(st.text(max_size=20), max_size=5), max_size=5))
        text = "\n".join([",".join(header)] + [",".join(json.dumps(c) for c in row) for row in cells]).encode(
            "utf-8", errors="surrogatepass")
    mangles = draw(st.lists(st.sampled_from(["bom", "crlf", "nul", "bad_utf8", "nest", "truncate", "huge",
                                             "junk"]), max_size=3))
    for mangle in mangles:
        if mangle == "bom":
            text = b"\xef\xbb\xbf" + text
        elif mangle == "crlf":
            text = text.replace(b"\n", b"\r\n")
        elif mangle == "nul":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + b"\x00" + text[at:]
        elif mangle == "bad_utf8":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80"])) + text[at:]
        elif mangle == "nest":
            depth = draw(st.sampled_from([10, 2_000, 50_000]))
            text += b"\n" + b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
        elif mangle == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
        elif mangle == "huge":
            text += b'\n{"text": "' + b"x" * 5_000 + b'"}'
        else:
            text += draw(st.binary(max_size=20))
    return suffix, text


configs = st.builds(DataConfig, shape=st.sampled_from(["auto", *CONVERTERS]),
                    on_error=st.sampled_from(["auto", "fail", "skip"]),
                    max_record_bytes=st.sampled_from([50, 1_000, 1_000_000]),
                    prompt_key=st.sampled_from([None, "question", "text"]),
                    messages_key=st.sampled_from([None, "conversations"]))


def _check_load(suffix: str, data: bytes, config: DataConfig) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(data)
        try:
            for row in read_rows(path, config.max_record_bytes):
                assert (row.data is None) != (row.problem is None)
                assert row.line >= 1 and row.file == str(path)
            loaded = load_records(path, config)
        except DataError as e:
            assert e.problems and all(p.file == str(path) for p in e.problems)
            assert all(p.line is None or p.line >= 1 for p in e.problems)
            return
        assert isinstance(loaded, LoadedData) and loaded.records
        assert all(isinstance(r, Record) and r.file == str(path) and r.line >= 1 for r in loaded.records)
        # Every record can be saved as UTF-8 (prepared splits) and so tokenized.
        for record in loaded.records:
            json.dumps(record_to_dict(record), ensure_ascii=False).encode("utf-8")
        assert config.on_error != "fail" or not loaded.skipped
        assert config.on_error != "auto" or len(loaded.skipped) * 100 <= loaded.total


def _check_convert(row: dict, shape: str, config: DataConfig) -> None:
    try:
        record = convert(row, shape, columns_for(shape, config), "f.jsonl", 3)
    except DataError as e:
        (problem,) = e.problems
        assert (problem.file, problem.line) == ("f.jsonl", 3) and problem.message
        return
    assert record.shape == shape and record.where == "f.jsonl:3"
    json.dumps(record_to_dict(record), ensure_ascii=False).encode("utf-8")
    assert all(p.line == 3 for p in check_record(record))


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(files(), configs)
def test_loaders_never_raise_anything_but_data_errors(file, config):
    _check_load(*file, config)


@FAST
@given(st.one_of(rows, values), st.sampled_from(list(CONVERTERS)), configs)
def test_converters_never_raise_anything_but_data_errors(row, shape, config):
    _check_convert(row, shape, config)


@pytest.mark.slow
@SLOW
@given(files(), configs)
def test_loaders_slow(file, config):
    _check_load(*file, config)


@pytest.mark.slow
@SLOW
@given(st.one_of(rows, values), st.sampled_from(list(CONVERTERS)), configs)
def test_converters_slow(row, shape, config):
    _check_convert(row, shape, config)
