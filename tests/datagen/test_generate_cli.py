"""`tunesmith generate self-instruct|from-docs`: help, flag errors, and dispatch to the generators."""

from __future__ import annotations

import pytest

from tunesmith.errors import ConfigError

from teacher_servers import DOCS, SEEDS, fake_teacher, read_lines


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
