"""Teachers: URLs, backoff, credentials kept out of provenance, and as teachers an in-process model and the
real `tunesmith serve` (the scripted HTTP teacher is exercised by the generator tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tunesmith import api
from tunesmith.config import FromDocsConfig, SelfInstructConfig, TeacherConfig
from tunesmith.datagen import teachers
from tunesmith.datagen.output import summary_path

from teacher_servers import REPO, SEEDS


class TestTeacherHelpers:
    @pytest.mark.parametrize("url, endpoint", [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://h/openai/v1/chat/completions", "http://h/openai/v1/chat/completions"),
    ])
    def test_chat_completions_url(self, url, endpoint):
        assert teachers.chat_completions_url(url) == endpoint

    def test_backoff_doubles_with_jitter_and_is_capped(self):
        for retry in range(1, 6):
            assert 0.5 * 2 ** (retry - 1) <= teachers.backoff_delay(retry, 1.0) <= 2 ** (retry - 1)
        assert teachers.backoff_delay(30, 1.0) <= teachers.MAX_BACKOFF_S
        assert teachers.backoff_delay(1, 0.01, retry_after="3") == 3.0
        assert teachers.backoff_delay(1, 0.01, retry_after="9999") == teachers.MAX_BACKOFF_S

    def test_config_needs_exactly_one_teacher(self):
        with pytest.raises(ValueError, match="exactly one teacher"):
            TeacherConfig()
        with pytest.raises(ValueError, match="exactly one teacher"):
            TeacherConfig(url="http://127.0.0.1:1", local="x")
        with pytest.raises(ValueError, match="expected http://HOST"):
            TeacherConfig(url="localhost:8000")

    def test_provenance_never_shows_credentials_in_the_url(self):
        assert teachers._public_url("http://user:secret@h:1/v1") == "http://h:1/v1"
        assert teachers._public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


# ------------------------------------------------------------------------------------------------ live teachers


class TestLocalTeacher:
    def test_in_process_model_as_teacher(self, tiny_model_dir, tmp_path):
        out = tmp_path / "gen.jsonl"
        teacher = TeacherConfig(local=str(tiny_model_dir), concurrency=2, max_tokens=8)
        summary = api.generate_self_instruct(str(SEEDS), str(out), teacher,
                                             SelfInstructConfig(num_examples=5, max_requests=2), progress=False)
        assert summary.teacher == f"local:{tiny_model_dir}" and summary.requests == 2
        assert summary.prompt_tokens > 200 and 0 < summary.completion_tokens <= 16
        assert summary.dropped["malformed"] == 2 and summary.failed_requests == 0  # a random model's gibberish


# ------------------------------------------------------------------------------------------------ tunesmith serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tunesmith_serve(tiny_model_dir):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", str(tiny_model_dir), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"tunesmith serve exited: {process.stdout.read()}"
            assert time.monotonic() < deadline, "tunesmith serve did not start in 90 s"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_both_generators_with_tunesmith_serve_as_teacher(tunesmith_serve, tmp_path):
    """The tiny random model writes gibberish: every answer is counted as malformed, none crashes the run."""
    teacher = TeacherConfig(url=tunesmith_serve, concurrency=2, max_retries=1, timeout_s=60, max_tokens=8)
    out = tmp_path / "gen.jsonl"
    summary = api.generate_self_instruct(str(SEEDS), str(out), teacher,
                                         SelfInstructConfig(num_examples=10, max_requests=1), progress=False)
    assert summary.requests == 1 and summary.failed_requests == 0 and summary.kept == 0
    assert summary.teacher.endswith(f"@ {tunesmith_serve}/chat/completions")  # model name read from /v1/models
    assert summary.prompt_tokens > 100 and 0 < summary.completion_tokens <= 8
    assert summary.dropped["malformed"] == 1 and summary.stopped == "max_requests=1 reached before 10 examples"
    assert json.loads(summary_path(out).read_text())["requests"] == 1
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("The library opens at nine and closes at eight on weekdays.")
    summary = api.generate_qa_from_docs(str(docs), str(tmp_path / "qa.jsonl"), teacher,
                                        FromDocsConfig(per_chunk=1, grade=True), progress=False)
    assert summary.requests == 1 and summary.dropped["malformed"] == 1 and summary.kept == 0
    assert summary.details["chunks_failed"] == 0 and summary.prompt_tokens > 0
