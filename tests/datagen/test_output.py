"""Resumable output: a torn last line is cut away, a foreign file is refused."""

from __future__ import annotations

import pytest

from tunesmith.datagen.output import recover_jsonl
from tunesmith.errors import DataError


class TestResume:
    def test_torn_last_line_is_cut_away(self, tmp_path):
        path = tmp_path / "out.jsonl"
        path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "tor')
        assert recover_jsonl(path) == [{"a": 1}, {"a": 2}]
        assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'

    def test_garbage_last_line_is_cut_and_a_bad_middle_line_refused(self, tmp_path):
        path = tmp_path / "out.jsonl"
        path.write_bytes(b'{"a": 1}\n\x00\x00\x00\n')
        assert recover_jsonl(path) == [{"a": 1}]
        assert path.read_bytes() == b'{"a": 1}\n'
        path.write_bytes(b'{"a": 1}\nnot json\n{"a": 3}\n')
        with pytest.raises(DataError, match="out.jsonl:2"):
            recover_jsonl(path)
        assert recover_jsonl(tmp_path / "missing.jsonl") == []
