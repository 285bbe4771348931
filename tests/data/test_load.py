"""Readers: every row comes back with its location; broken rows become problems, never exceptions."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.load import read_rows
from tunesmith.errors import DataError


def _write(path, data: bytes | str):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _summary(rows):
    return [(r.line, r.data if r.problem is None else r.problem.message) for r in rows]


class TestJsonl:
    def test_lines_are_located_and_blank_lines_skipped(self, tmp_path):
        path = _write(tmp_path / "d.jsonl", '{"a": "1"}\n\n{"a": "2"}\n')
        assert _summary(read_rows(path)) == [(1, {"a": "1"}), (3, {"a": "2"})]

    def test_bom_and_crlf_are_accepted(self, tmp_path):
        path = _write(tmp_path / "d.jsonl", b'\xef\xbb\xbf{"a": "1"}\r\n{"a": "2"}\r\n')
        assert _summary(read_rows(path)) == [(1, {"a": "1"}), (2, {"a": "2"})]

    def test_each_broken_line_is_one_problem_and_reading_goes_on(self, tmp_path):
        path = _write(tmp_path / "d.jsonl", b'{"a": \n{"a": "caf\xe9"}\n[1, 2]\n"text"\n{"a": "ok"}\n')
        rows = read_rows(path)
        assert [r.line for r in rows] == [1, 2, 3, 4, 5]
        assert "invalid JSON" in rows[0].problem.message
        assert "not valid UTF-8" in rows[1].problem.message and "0xe9" in rows[1].problem.message
        assert "got an array" in rows[2].problem.message
        assert "got a string" in rows[3].problem.message
        assert rows[4].data == {"a": "ok"} and rows[4].problem is None
        assert all(r.problem.file == str(path) and r.problem.line == r.line for r in rows[:4])

    def test_oversized_record_is_a_problem_and_the_next_line_still_reads(self, tmp_path):
        big = json.dumps({"a": "x" * 500})
        path = _write(tmp_path / "d.jsonl", f'{big}\n{{"a": "small"}}\n')
        rows = read_rows(path, max_record_bytes=100)
        assert "more than data.max_record_bytes=100" in rows[0].problem.message
        assert rows[1].line == 2 and rows[1].data == {"a": "small"}

    def test_record_of_exactly_the_limit_is_fine(self, tmp_path):
        line = json.dumps({"a": "x" * 50})
        path = _write(tmp_path / "d.jsonl", line + "\n" + line)
        assert all(r.problem is None for r in read_rows(path, max_record_bytes=len(line)))
        assert all(r.problem for r in read_rows(path, max_record_bytes=len(line) - 1))

    def test_truncated_last_line_is_named(self, tmp_path):
        path = _write(tmp_path / "d.jsonl", '{"a": "1"}\n{"a": "tr')
        rows = read_rows(path)
        assert rows[0].data == {"a": "1"}
        assert rows[1].line == 2 and "cut off" in rows[1].problem.message

    def test_deep_nesting_is_a_problem_not_a_crash(self, tmp_path):
        path = _write(tmp_path / "d.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
        (row,) = read_rows(path, max_record_bytes=10**6)
        assert row.problem is not None


class TestJson:
    def test_array_elements_are_located_by_their_first_line(self, tmp_path):
        text = '[\n  {"a": "1"},\n  {\n    "a": "2"\n  }\n]\n'
        assert _summary(read_rows(_write(tmp_path / "d.json", text))) == [(2, {"a": "1"}), (3, {"a": "2"})]

    def test_data_key_holds_the_records(self, tmp_path):
        text = '{"version": 2, "meta": {"x": [1]},\n "data": [\n{"a": "1"}]}'
        assert _summary(read_rows(_write(tmp_path / "d.json", text))) == [(3, {"a": "1"})]

    def test_object_without_data_key_is_a_file_error(self, tmp_path):
        with pytest.raises(DataError, match="data"):
            read_rows(_write(tmp_path / "d.json", '{"rows": []}'))

    def test_a_scalar_file_is_a_file_error(self, tmp_path):
        with pytest.raises(DataError, match="array of records"):
            read_rows(_write(tmp_path / "d.json", '"hello"'))

    def test_broken_element_stops_reading_with_a_located_problem(self, tmp_path):
        text = '[\n{"a": "1"},\n{"a": },\n{"a": "3"}\n]'
        rows = read_rows(_write(tmp_path / "d.json", text))
        assert rows[0].data == {"a": "1"}
        assert rows[1].line == 3 and "invalid JSON" in rows[1].problem.message
        assert len(rows) == 2

    def test_non_utf8_and_oversize_elements_are_per_record_problems(self, tmp_path):
        data = b'[\n{"a": "caf\xe9"},\n{"a": "' + b"x" * 300 + b'"},\n{"a": "ok"}\n]'
        rows = read_rows(_write(tmp_path / "d.json", data), max_record_bytes=200)
        assert "UTF-8" in rows[0].problem.message and rows[0].line == 2
        assert "max_record_bytes" in rows[1].problem.message and rows[1].line == 3
        assert rows[2].data == {"a": "ok"}

    def test_truncated_array_is_reported(self, tmp_path):
        rows = read_rows(_write(tmp_path / "d.json", '[{"a": "1"},\n{"a": "2"}'))
        assert rows[1].data == {"a": "2"}
        assert "truncated" in rows[2].problem.message

    def test_empty_array_has_no_rows(self, tmp_path):
        assert read_rows(_write(tmp_path / "d.json", "\ufeff[ ]")) == []


class TestCsv:
    def test_rows_are_numbered_from_the_first_data_row(self, tmp_path):
        text = '\ufeffquestion,answer\r\n"What, exactly?","A\nmultiline answer"\r\nQ2,A2\r\n'
        assert _summary(read_rows(_write(tmp_path / "d.csv", text))) == [
            (1, {"question": "What, exactly?", "answer": "A\nmultiline answer"}),
            (2, {"question": "Q2", "answer": "A2"})]

    def test_short_rows_lack_columns_and_long_rows_are_problems(self, tmp_path):
        rows = read_rows(_write(tmp_path / "d.csv", "a,b\nonly\n1,2,3\n"))
        assert rows[0].data == {"a": "only"}
        assert "3 cells" in rows[1].problem.message and rows[1].line == 2

    def test_non_utf8_row_is_a_problem(self, tmp_path):
        rows = read_rows(_write(tmp_path / "d.csv", b"a,b\ncaf\xe9,x\nok,y\n"))
        assert "UTF-8" in rows[0].problem.message
        assert rows[1].data == {"a": "ok", "b": "y"}

    def test_big_cells_beyond_csv_default_limit_are_read(self, tmp_path):
        rows = read_rows(_write(tmp_path / "d.csv", "a\n" + "x" * 200_000 + "\n"))
        assert rows[0].data == {"a": "x" * 200_000}


def test_parquet_rows_keep_their_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", None], "n": [1, 2]}), path)
    assert _summary(read_rows(path)) == [(1, {"prompt": "p1", "completion": "c1", "n": 1}),
                                         (2, {"prompt": "p2", "completion": None, "n": 2})]


def test_corrupt_parquet_is_a_file_error(tmp_path):
    with pytest.raises(DataError, match="Parquet"):
        read_rows(_write(tmp_path / "d.parquet", b"not parquet at all"))


class TestDatasetsFolder:
    def test_dataset(self, tmp_path):
        import datasets

        datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}]).save_to_disk(tmp_path / "ds")
        assert _summary(read_rows(tmp_path / "ds")) == [(1, {"text": "a"}), (2, {"text": "b"})]

    def test_dataset_dict_uses_train(self, tmp_path):
        import datasets

        datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "t"}]),
                              "test": datasets.Dataset.from_list([{"text": "x"}])}).save_to_disk(tmp_path / "dd")
        assert _summary(read_rows(tmp_path / "dd")) == [(1, {"text": "t"})]

    def test_plain_folder_is_a_file_error(self, tmp_path):
        with pytest.raises(DataError, match="save_to_disk"):
            read_rows(tmp_path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl.*not found"):
        read_rows(tmp_path / "nope.jsonl")


def test_unknown_extension_names_the_path_and_the_formats(tmp_path):
    with pytest.raises(DataError, match=r"d\.txt.*'\.txt'.*\.jsonl"):
        read_rows(_write(tmp_path / "d.txt", "hi"))
