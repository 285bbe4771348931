"""`tunesmith generate self-instruct|from-docs`: help, flag errors, dispatch to the generators, and how a run
ends as a real process: a teacher that answers nothing, SIGTERM."""

from __future__ import annotations

import json
import signal

import pytest

from tunesmith.datagen.output import summary_path
from tunesmith.errors import ConfigError

from teacher_servers import DOCS, SEEDS, fake_teacher, kill_when, read_lines, start_cli, write_docs


class TestCli:
    def test_help_and_flag_errors(self, capsys):
        from tunesmith.cli.generate_data import build_from_docs_parser, build_self_instruct_parser, main_self_instruct

        assert build_self_instruct_parser().prog == "tunesmith generate self-instruct"
        assert "--per-chunk" in build_from_docs_parser().format_help()
        assert "(default: 4)" in build_self_instruct_parser().format_help()  # concurrency, from config.py
        with pytest.raises(SystemExit):  # a teacher is required
            main_self_instruct(["--seeds", str(SEEDS), "--out", "x.jsonl"])
        with pytest.raises(ConfigError, match="concurrency=0"):
            main_self_instruct(["--seeds", str(SEEDS), "--out", "x.jsonl", "--teacher-url", "http://127.0.0.1:9",
                                "--teacher-model", "m", "--concurrency", "0"])

    def test_tunesmith_generate_dispatches_to_the_generators(self, tmp_path, capsys):
        from tunesmith.cli import main

        out = tmp_path / "qa.jsonl"
        with fake_teacher() as server:
            code = main(["generate", "from-docs", str(DOCS / "kettle_manual.md"), "--out", str(out),
                         "--teacher-url", server.url, "--per-chunk", "1", "--no-progress"])
        assert code == 0 and len(read_lines(out)) == 5
        assert "from-docs:" in capsys.readouterr().out
        code = main(["generate", "from-docs", str(tmp_path / "missing"), "--out", str(out),
                     "--teacher-url", "http://127.0.0.1:9", "--teacher-model", "m"])
        assert code == 1 and "documents folder not found" in capsys.readouterr().err


class TestHowARunEnds:
    @pytest.mark.parametrize("mode, failure", [("toolong", "HTTP 400: "), ("error500", "HTTP 500")])
    def test_teacher_answering_nothing_exits_non_zero_naming_the_last_failure(self, tmp_path, mode, failure):
        out = tmp_path / "qa.jsonl"
        with fake_teacher(mode) as server:
            process = start_cli("from-docs", [str(DOCS / "kettle_manual.md"), "--out", str(out), "--teacher-url",
                                              server.url, "--concurrency", "1", "--max-retries", "1",
                                              "--backoff", "0.01", "--no-progress"])
            stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 1 and "Traceback" not in stderr
        error = stderr.strip().splitlines()[-1]
        assert error.startswith("error: 4 of 4 requests to the teacher fake-teacher @ ")
        assert f"last failure: {failure}" in error and str(summary_path(out)) in error
        assert "from-docs:" in stdout and "4 failed" in stdout  # the summary is printed all the same
        assert json.loads(summary_path(out).read_text())["failed_requests"] == 4

    @pytest.mark.parametrize("target", ["self-instruct", "from-docs"])
    def test_sigterm_finishes_the_line_and_writes_the_summary(self, tmp_path, target):
        out = tmp_path / "gen.jsonl"
        source = (["--seeds", str(SEEDS), "-n", "400", "--tasks-per-request", "2"] if target == "self-instruct"
                  else [str(write_docs(tmp_path / "docs", 60)), "--chunk-tokens", "32"])
        with fake_teacher("good", delay=0.25) as server:
            process = start_cli(target, [*source, "--out", str(out), "--teacher-url", server.url, "--no-progress"])
            kill_when(process, lambda: out.is_file() and out.stat().st_size > 0, sig=signal.SIGTERM)
            assert process.wait(timeout=30) == 130
            stderr = process.stderr.read()
        assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr
        records = read_lines(out)  # whole lines only
        summary = json.loads(summary_path(out).read_text())
        assert summary["stopped"].startswith("interrupted by SIGTERM") and summary["total"] == len(records) >= 1
