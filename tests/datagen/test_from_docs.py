"""From-docs: resume's chunk groups, then the generator end to end against the scripted teacher server (sources,
duplicates, grading, timeouts, resume after a kill)."""

from __future__ import annotations

import json
import time

import pytest

from tunesmith import api
from tunesmith.config import DataConfig, FromDocsConfig
from tunesmith.data import load_records
from tunesmith.datagen import from_docs
from tunesmith.datagen.documents import collect_chunks
from tunesmith.datagen.output import recover_jsonl, summary_path
from tunesmith.errors import TeacherError

from teacher_servers import DOCS, fake_teacher, kill_when, read_lines, start_cli, teacher_config, write_docs


class TestCompleteChunks:
    def test_incomplete_last_chunk_group_is_removed(self, tmp_path):
        path = tmp_path / "qa.jsonl"
        rows = [{"question": f"q{i}", "chunk_id": c, "provenance": {"pairs_in_chunk": n}}
                for i, (c, n) in enumerate([("a#1", 2), ("a#1", 2), ("a#2", 3), ("a#2", 3)])]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert from_docs._complete_chunks(path, recover_jsonl(path)) == rows[:2]
        assert recover_jsonl(path) == rows[:2]
        assert from_docs._complete_chunks(path, rows[:2]) == rows[:2]


class TestFromDocsLive:
    def test_output_shape_sources_dedup_and_data_layer(self, tmp_path):
        out = tmp_path / "qa.jsonl"
        chunks = collect_chunks(DOCS, 512)
        with fake_teacher() as server:
            summary = api.generate_qa_from_docs(str(DOCS), str(out), teacher_config(server),
                                                FromDocsConfig(per_chunk=2), progress=False)
            assert server.requests() == len(chunks)
        records = read_lines(out)
        assert len(records) == summary.kept == 2 * len(chunks)
        assert set(records[0]) == {"question", "answer", "source", "chunk_id", "provenance"}
        assert [r["chunk_id"] for r in records[::2]] == [c.id for c in chunks]
        assert all(r["source"] == r["chunk_id"].split("#")[0] for r in records)
        # every reply planted a near-duplicate question and one malformed item
        assert summary.dropped["similar"] == len(chunks) and summary.dropped["malformed"] == len(chunks)
        assert summary.requested == 2 * len(chunks) and summary.details["chunks_failed"] == 0
        loaded = load_records(out, DataConfig(path=str(out)))
        assert loaded.shape == "qa" and len(loaded.records) == len(records)

    def test_grading_keeps_only_grounded_pairs(self, tmp_path):
        out = tmp_path / "qa.jsonl"
        docs = write_docs(tmp_path / "docs", 3)
        with fake_teacher() as server:
            summary = api.generate_qa_from_docs(str(docs), str(out), teacher_config(server),
                                                FromDocsConfig(per_chunk=3, chunk_tokens=32, grade=True),
                                                progress=False)
            assert server.requests() == 2 * 3  # one question request and one grading request per chunk
        records = read_lines(out)
        assert summary.dropped["not_grounded"] == 3 and len(records) == 6
        assert not any("unverified" in r["question"] for r in records)
        assert all(r["provenance"]["pairs_in_chunk"] == 2 for r in records)

    def test_timeouts_are_retried_then_summarized_and_rerun_retries_failed_chunks(self, tmp_path):
        out = tmp_path / "qa.jsonl"
        docs = write_docs(tmp_path / "docs", 2)
        with fake_teacher("slow", delay=3.0) as server:
            started = time.monotonic()
            with pytest.raises(TeacherError, match="timed out after 0.3 s"):
                api.generate_qa_from_docs(str(docs), str(out), teacher_config(server, max_retries=1, timeout_s=0.3),
                                          FromDocsConfig(chunk_tokens=32), progress=False)
            assert time.monotonic() - started < 5
        summary = json.loads(summary_path(out).read_text())
        assert summary["failed_requests"] == 2 and summary["retries"] == 2 and summary["details"]["chunks_failed"] == 2
        assert "timed out after 0.3 s" in summary["last_failure"] and summary["kept"] == 0
        with fake_teacher() as server:
            summary = api.generate_qa_from_docs(str(docs), str(out), teacher_config(server),
                                                FromDocsConfig(chunk_tokens=32), progress=False)
        assert summary.details["chunks_done_before"] == 0 and summary.kept == 6

    def test_killed_generator_resumes_without_torn_lines_or_duplicates(self, tmp_path):
        out = tmp_path / "qa.jsonl"
        docs = write_docs(tmp_path / "docs", 12)
        argv = [str(docs), "--out", str(out), "--per-chunk", "3", "--chunk-tokens", "32", "--concurrency", "2",
                "--backoff", "0.01", "--no-progress"]
        with fake_teacher("good", delay=0.25) as server:
            argv += ["--teacher-url", server.url]
            process = start_cli("from-docs", argv)
            kill_when(process, lambda: out.is_file() and len(out.read_bytes().splitlines()) >= 2)
            # also cut the last chunk's group short, as a kill between two of its lines would
            lines = out.read_bytes().rsplit(b"\n", 1)[0].splitlines()
            out.write_bytes(b"\n".join(lines[:-1]) + b"\n" + b'{"question": "torn')
            rerun = start_cli("from-docs", argv)
            assert rerun.wait(timeout=60) == 0, rerun.stderr.read()
        records = read_lines(out)
        chunk_ids = [c.id for c in collect_chunks(docs, 32)]
        assert len(chunk_ids) == 12  # the title has no text of its own: it joins the first part
        assert sorted({r["chunk_id"] for r in records}) == sorted(chunk_ids)
        assert len(records) == 3 * len(chunk_ids)
        assert len({r["question"] for r in records}) == len(records)
        for chunk_id in chunk_ids:
            assert [r["provenance"]["pair"] for r in records if r["chunk_id"] == chunk_id] == [1, 2, 3]
