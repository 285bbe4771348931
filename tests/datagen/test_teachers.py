"""Teachers: URLs, backoff, credentials kept out of provenance, and as teachers an in-process model and the
real `tunesmith serve` (the scripted HTTP teacher is exercised by the generator tests)."""

from __future__ import annotations

import json

import pytest

from tunesmith import api
from tunesmith.config import FromDocsConfig, SelfInstructConfig, TeacherConfig
from tunesmith.datagen import teachers
from tunesmith.datagen.output import summary_path
from tunesmith.errors import TeacherError

from teacher_servers import DOCS, SEEDS, fake_teacher, teacher_config
from servers import tunesmith_serve as serving


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


class TestStatedMaxTokens:
    @pytest.mark.parametrize("body, asked, stated", [
        ({"message": "max_tokens=1536 is more than this server allows (1024)", "param": "max_tokens"}, 1536, 1024),
        ({"message": "max_tokens is too large: 5000. This model supports at most 4096 completion tokens, whereas "
                     "you provided 5000.", "param": "max_tokens"}, 5000, 4096),
        ({"message": "max_tokens must be at most 2048", "param": None}, 4096, 2048),
        ({"message": "the prompt (900 tokens) plus max_tokens=1024 exceeds this model's context of 1024 tokens",
          "param": "max_tokens", "code": "context_length_exceeded"}, 1024, None),  # that prompt's problem only
        ({"message": "at most 4 stop sequences are allowed", "param": "stop"}, 1024, None),
        ({"message": "max_tokens=1024 is more than this server allows (2048)"}, 1024, None),  # not lower: no retry
        ({"message": "max_tokens is too large"}, 1024, None),  # no maximum stated
    ])
    def test_reads_the_servers_maximum_from_an_openai_error(self, body, asked, stated):
        assert teachers.stated_max_tokens(json.dumps({"error": body}), asked) == stated

    @pytest.mark.parametrize("text", ["<html>Bad Request</html>", '"oops"', '{"error": "max_tokens up to 10"}'])
    def test_other_bodies(self, text):
        assert teachers.stated_max_tokens(text, 1024) == (10 if "up to" in text else None)


class TestMaxTokensRefused:
    def test_retried_once_at_the_stated_maximum_which_the_rest_of_the_run_uses(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher("maxtokens") as server:
            summary = api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server, concurrency=1),
                                                 SelfInstructConfig(num_examples=8, tasks_per_request=4),
                                                 progress=False)
            assert server.stats()["max_tokens"] == [1024, 300, 300]
        assert summary.failed_requests == 0 and summary.requests == 2 and summary.kept == 8
        assert summary.retries == 1 and summary.notes == [
            "max_tokens lowered from 1024 to 300, the most the teacher allows (set --max-tokens to skip the refused "
            "first try)"]
        assert "note: max_tokens lowered from 1024 to 300" in summary.text()
        assert json.loads(summary_path(out).read_text())["notes"] == summary.notes

    def test_a_second_refusal_is_a_failure_not_a_loop(self, tmp_path):
        with fake_teacher("toolong") as server:
            with pytest.raises(TeacherError, match=r"last failure: HTTP 400: .*allows \(300\)"):
                api.generate_qa_from_docs(str(DOCS / "kettle_manual.md"), str(tmp_path / "qa.jsonl"),
                                          teacher_config(server, concurrency=1), FromDocsConfig(), progress=False)
            # the first request is sent again at the stated maximum, once; the later ones ask for it at once, and
            # 4 failed requests in a row stop the run
            assert server.stats()["max_tokens"] == [1024, 300, 300, 300, 300]


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


@pytest.fixture
def tunesmith_serve(tiny_model_dir):
    with serving(tiny_model_dir) as url:
        yield url


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


class TestDefaultsWithTunesmithServe:
    """The generators' defaults against the project's own server: it once refused every request (1536 > 1024)."""

    def test_default_max_tokens_is_within_what_the_server_allows(self):
        from tunesmith.config import ServeConfig

        assert TeacherConfig(url="http://127.0.0.1:1").max_tokens <= ServeConfig().max_tokens

    def test_default_settings_get_answers(self, terse_model_dir, tmp_path):
        teacher_default = TeacherConfig(url="http://127.0.0.1:1")  # every setting as a user gets it
        with serving(terse_model_dir) as url:
            teacher = teacher_default.model_copy(update={"url": url})
            summary = api.generate_qa_from_docs(str(DOCS / "kettle_manual.md"), str(tmp_path / "qa.jsonl"), teacher,
                                                FromDocsConfig(), progress=False)
            si = api.generate_self_instruct(str(SEEDS), str(tmp_path / "gen.jsonl"), teacher,
                                            SelfInstructConfig(max_requests=2), progress=False)
        for s in summary, si:  # the model ends every answer at once: nothing to keep, but nothing refused
            assert s.requests >= 2 and s.failed_requests == 0 and s.retries == 0 and s.notes == []
            assert s.last_failure is None and s.prompt_tokens > 0

    def test_a_lower_server_limit_is_adopted_after_one_refusal(self, tiny_model_dir, tmp_path):
        with serving(tiny_model_dir, "--max-tokens", "12") as url:
            summary = api.generate_self_instruct(str(SEEDS), str(tmp_path / "gen.jsonl"),
                                                 TeacherConfig(url=url, concurrency=1),
                                                 SelfInstructConfig(num_examples=10, max_requests=2), progress=False)
        # the first request is refused (1024 > 12) and sent again at 12; the second asks for 12 at once
        assert summary.requests == 2 and summary.failed_requests == 0 and summary.retries == 1
        assert 0 < summary.completion_tokens <= 2 * 12
        assert summary.notes and "lowered from 1024 to 12" in summary.notes[0]
