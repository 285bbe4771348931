"""Teacher-LLM data generation: parsers, filters, chunking and resume logic alone, then both generators end to end
against real HTTP server processes on 127.0.0.1 (the scripted `fake_teacher.py` and `tunesmith serve`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tunesmith import api
from tunesmith.datagen import generators as datagen
from tunesmith.config import DataConfig, FromDocsConfig, SelfInstructConfig, TeacherConfig
from tunesmith.data import load_records
from tunesmith.datagen.generators import (Chunk, RougeFilter, Task, parse_grades, parse_numbered_tasks, parse_qa_pairs,
                               recover_jsonl, split_chunks)
from tunesmith.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
FAKE_TEACHER = Path(__file__).with_name("fake_teacher.py")
SEEDS = REPO / "examples" / "seed_tasks.jsonl"
DOCS = REPO / "examples" / "docs"


# ------------------------------------------------------------------------------------------------ filters


class TestRougeFilter:
    def test_keeps_novel_instruction_and_drops_paraphrase_above_threshold(self):
        from rouge_score import rouge_scorer

        kept = "Give three tips for staying healthy during the winter months."
        paraphrase = "Give three tips for staying healthy during winter months."
        novel = "Translate the following sentence into French."
        scorer = rouge_scorer.RougeScorer(["rougeL"])
        assert scorer.score(kept, paraphrase)["rougeL"].fmeasure > 0.7
        assert scorer.score(kept, novel)["rougeL"].fmeasure < 0.7
        f = RougeFilter(0.7)
        f.add(kept)
        assert f.is_near_duplicate(paraphrase)
        assert not f.is_near_duplicate(novel)
        score, match = f.most_similar(paraphrase)
        assert match == kept and score == pytest.approx(scorer.score(kept, paraphrase)["rougeL"].fmeasure)

    def test_threshold_is_inclusive_and_words_in_any_script_count(self):
        f = RougeFilter(0.7)
        f.add("Опиши погоду в Москве зимой")
        assert f.is_near_duplicate("Опиши погоду в Москве летом")  # 4 of 5 words: F1 = 0.8
        assert not f.is_near_duplicate("Назови три столицы Европы")

    @pytest.mark.parametrize("instruction, problem", [
        ("Sort.", "too_short"),
        ("Explain " + "very " * 200 + "slowly.", "too_long"),
        ("Describe the image below.", "unsupported"),
        ("Compose music for a wedding.", "unsupported"),
        ("Summarize the attached file.", "unsupported"),
        ("List three prime numbers above fifty.", None),
    ])
    def test_instruction_problem(self, instruction, problem):
        assert datagen.instruction_problem(Task(instruction, "", "x"), SelfInstructConfig()) == problem


# ------------------------------------------------------------------------------------------------ parsers


class TestParseNumberedTasks:
    def test_messy_teacher_text(self):
        text = (
            "Sure! Here are some new tasks:\n\n"
            "###\n"
            "4. **Instruction:** Convert the temperature to Celsius.\n"
            "4. **Input:** 212 °F\n"
            "4. **Output:** 100 °C\n"
            "###\n"
            "5. Instruction: Write a haiku about   autumn\n   leaves.\n"
            "5. Input:\n<noinput>\n"
            "5. Output:\nRed leaves drift and fall\nthe path hides under their gold\nwind keeps the count\n"
            "###\n"
            "6) instruction: Name a prime number.\n"
            "6) output: 7\n\n###\n"
            "7. Instruction: This one lost its output.\n7. Input: something\n"
            "###\n"
            "8. Output: an output without an instruction\n"
            "9. Instruction:\n9. Output: an empty instruction\n")
        tasks, malformed = parse_numbered_tasks(text)
        assert tasks == [
            Task("Convert the temperature to Celsius.", "212 °F", "100 °C"),
            Task("Write a haiku about autumn leaves.", "",
                 "Red leaves drift and fall\nthe path hides under their gold\nwind keeps the count"),
            Task("Name a prime number.", "", "7"),
        ]
        assert malformed == 3

    @pytest.mark.parametrize("text", ["", "I cannot help with that.", "{}[]"])
    def test_reply_without_tasks_is_one_malformed_item(self, text):
        assert parse_numbered_tasks(text) == ([], 1)

    def test_prompt_examples_round_trip_through_the_parser(self):
        examples = [Task("Add the numbers.", "2, 3", "5"), Task("Name a colour.", "", "Blue")]
        prompt = datagen.self_instruct_prompt(examples, 4)
        assert "Now write tasks 3 to 6" in prompt
        assert parse_numbered_tasks(prompt.split("###", 1)[1]) == (examples, 0)


class TestParseQaPairs:
    def test_fenced_json_with_prose_and_bad_items(self):
        text = ('Here you go [as requested]:\n```json\n[{"question": "What is   the range?", "answer": "0.5-1.7 L."},'
                ' {"Question": "Who?", "Answer": "Mira."}, {"question": "", "answer": "x"}, "oops"]\n```\nThanks!')
        assert parse_qa_pairs(text) == ([("What is the range?", "0.5-1.7 L."), ("Who?", "Mira.")], 2)

    def test_object_holding_the_list_and_bare_json(self):
        assert parse_qa_pairs('{"pairs": [{"q": "A?", "a": "B."}]}') == ([("A?", "B.")], 0)
        assert parse_qa_pairs('{"question": "A?", "answer": "B."}') == ([("A?", "B.")], 0)

    @pytest.mark.parametrize("text", ["no json here", '```json\n[{"question": "unterminated\n```', "42"])
    def test_garbage_is_one_malformed_item(self, text):
        assert parse_qa_pairs(text) == ([], 1)

    def test_grades_by_number_by_position_and_missing(self):
        assert parse_grades('```\n[{"pair": 3, "grounded": "no"}, {"pair": 1, "grounded": true}]\n```', 3) == \
            [True, None, False]
        assert parse_grades("[true, false]", 3) == [True, False, None]
        assert parse_grades("I think they are all fine", 2) == [None, None]


# ------------------------------------------------------------------------------------------------ documents


class TestChunking:
    def test_headings_start_chunks_and_long_sections_split_at_paragraphs(self):
        text = ("# Guide\n\n## Setup\n\nPlug it in.\n\n## Care\n\n" + "\n\n".join(["Wipe it with a cloth. " * 5] * 4)
                + "\n\n## Empty section\n")
        chunks = split_chunks(text, 64)  # 256 characters
        assert chunks[0] == "# Guide\n\n## Setup\n\nPlug it in."
        care = chunks[1:]
        # 7 + 2 x 111 characters fit in 256, a third paragraph does not: two parts, each under its heading
        assert len(care) == 2 and all(c.startswith("## Care\n\n") and c.count("Wipe it with a cloth.") == 10
                                      for c in care)
        assert all(len(c) <= 64 * datagen.CHARS_PER_TOKEN for c in chunks)
        assert "Empty section" not in "".join(chunks)

    def test_giant_paragraph_is_cut_at_sentences_within_budget(self):
        text = " ".join(f"Sentence number {i} says something." for i in range(100))
        chunks = split_chunks(text, 32)
        assert all(len(c) <= 128 for c in chunks)
        assert " ".join(chunks) == text

    def test_example_documents_of_every_type(self):
        chunks = datagen.collect_chunks(DOCS, 512)
        sources = {c.source for c in chunks}
        assert sources == {"kettle_manual.md", "community_garden.txt", "library_faq.html"}
        html = [c.text for c in chunks if c.source == "library_faq.html"]
        assert html[0].startswith("# Northfield Public Library") and "## Borrowing" in html[0]
        assert not any("analytics" in t or "font-family" in t for t in html)
        assert len({c.id for c in chunks}) == len(chunks)

    def test_pdf_text_layer(self, tmp_path):
        (tmp_path / "notes.pdf").write_bytes(_tiny_pdf("Descale the kettle once a month."))
        assert "Descale the kettle once a month." in datagen.read_document(tmp_path / "notes.pdf")

    def test_broken_pdf_and_empty_folder_are_clear_errors(self, tmp_path):
        (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
        with pytest.raises(DataError, match="broken.pdf"):
            datagen.read_document(tmp_path / "broken.pdf")
        (tmp_path / "empty").mkdir()
        with pytest.raises(DataError, match="no documents"):
            datagen.collect_chunks(tmp_path / "empty", 512)


def _tiny_pdf(text: str) -> bytes:
    """A one-page PDF with a text layer, built by hand (pypdf reads but does not write text)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# ------------------------------------------------------------------------------------------------ seeds, resume


class TestSeeds:
    def test_stanford_form_and_data_layer_shapes(self, tmp_path):
        stanford = datagen.load_seed_tasks(SEEDS)
        assert len(stanford) == 16 and stanford[0].id == "seed_task_0" and stanford[0].output
        alpaca = tmp_path / "seeds.jsonl"
        alpaca.write_text(json.dumps({"instruction": "Add.", "input": "2, 3", "output": "5"}) + "\n")
        assert datagen.load_seed_tasks(alpaca) == [Task("Add.", "2, 3", "5", id=f"{alpaca}:1")]
        chat = tmp_path / "chat.jsonl"
        chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                                 {"role": "assistant", "content": "Hello."}]}) + "\n")
        assert datagen.load_seed_tasks(chat) == [Task("Hi?", "", "Hello.", id=f"{chat}:1")]

    def test_bad_stanford_instance_names_file_line_and_field(self, tmp_path):
        path = tmp_path / "seeds.jsonl"
        path.write_text(json.dumps({"instruction": "ok", "instances": [{"input": "", "output": "x"}]}) + "\n"
                        + json.dumps({"instruction": "bad", "instances": []}) + "\n")
        with pytest.raises(DataError, match=r"seeds.jsonl:2: instances"):
            datagen.load_seed_tasks(path)
        path.write_text(json.dumps({"instruction": "ok", "instances": [{"input": "", "output": "x"}]}) + "\n{oops\n")
        with pytest.raises(DataError, match=r"seeds.jsonl:2: invalid JSON"):
            datagen.load_seed_tasks(path)


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

    def test_incomplete_last_chunk_group_is_removed(self, tmp_path):
        path = tmp_path / "qa.jsonl"
        rows = [{"question": f"q{i}", "chunk_id": c, "provenance": {"pairs_in_chunk": n}}
                for i, (c, n) in enumerate([("a#1", 2), ("a#1", 2), ("a#2", 3), ("a#2", 3)])]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert datagen._complete_chunks(path, recover_jsonl(path)) == rows[:2]
        assert recover_jsonl(path) == rows[:2]
        assert datagen._complete_chunks(path, rows[:2]) == rows[:2]


class TestTeacherHelpers:
    @pytest.mark.parametrize("url, endpoint", [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://h/openai/v1/chat/completions", "http://h/openai/v1/chat/completions"),
    ])
    def test_chat_completions_url(self, url, endpoint):
        assert datagen.chat_completions_url(url) == endpoint

    def test_backoff_doubles_with_jitter_and_is_capped(self):
        for retry in range(1, 6):
            assert 0.5 * 2 ** (retry - 1) <= datagen.backoff_delay(retry, 1.0) <= 2 ** (retry - 1)
        assert datagen.backoff_delay(30, 1.0) <= datagen.MAX_BACKOFF_S
        assert datagen.backoff_delay(1, 0.01, retry_after="3") == 3.0
        assert datagen.backoff_delay(1, 0.01, retry_after="9999") == datagen.MAX_BACKOFF_S

    def test_config_needs_exactly_one_teacher(self):
        with pytest.raises(ValueError, match="exactly one teacher"):
            TeacherConfig()
        with pytest.raises(ValueError, match="exactly one teacher"):
            TeacherConfig(url="http://127.0.0.1:1", local="x")
        with pytest.raises(ValueError, match="expected http://HOST"):
            TeacherConfig(url="localhost:8000")

    def test_provenance_never_shows_credentials_in_the_url(self):
        assert datagen._public_url("http://user:secret@h:1/v1") == "http://h:1/v1"
        assert datagen._public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


# ------------------------------------------------------------------------------------------------ live teachers


class Server:
    def __init__(self, url: str, process: subprocess.Popen):
        self.url, self.process = url, process

    def requests(self) -> int:
        return httpx.get(self.url.removesuffix("/v1") + "/stats", timeout=5).json()["requests"]


@contextlib.contextmanager
def fake_teacher(mode: str = "good", delay: float = 0.0):
    process = subprocess.Popen([sys.executable, str(FAKE_TEACHER), "--mode", mode, "--delay", str(delay)],
                               stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield Server(f"http://127.0.0.1:{port}/v1", process)
    finally:
        process.kill()
        process.wait(timeout=10)


def teacher_config(server: Server, **overrides) -> TeacherConfig:
    settings = dict(url=server.url, concurrency=2, max_retries=2, timeout_s=5.0, backoff_s=0.01)
    return TeacherConfig(**{**settings, **overrides})


def read_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in data.decode().splitlines()]


def write_docs(folder: Path, sections: int) -> Path:
    folder.mkdir()
    body = "\n\n".join(f"## Part {i}\n\nThe part number {i} of the manual explains one setting."
                       for i in range(sections))
    (folder / "manual.md").write_text("# Manual\n\n" + body)
    return folder


class TestSelfInstructLive:
    def test_output_shape_provenance_filters_and_data_layer(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher() as server:
            summary = api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server),
                                                 SelfInstructConfig(num_examples=12, tasks_per_request=4),
                                                 progress=False)
            assert summary.requests == server.requests() == 3
        records = read_lines(out)
        assert len(records) == summary.kept == summary.total == 12
        assert set(records[0]) == {"instruction", "input", "output", "provenance"}
        provenance = records[0]["provenance"]
        assert provenance["teacher"] == f"fake-teacher @ {server.url}/chat/completions"
        assert len(provenance["seed_ids"]) == 3 and all(s.startswith("seed_task_") for s in provenance["seed_ids"])
        # every reply planted a paraphrase, a copied seed, an image task and an item without output
        assert summary.dropped["similar"] >= 2 and summary.dropped["duplicate"] >= 2
        assert summary.dropped["unsupported"] >= 2 and summary.dropped["malformed"] == 3
        kept = RougeFilter(0.7)
        for record in records:
            assert not kept.is_near_duplicate(record["instruction"])
            assert "picture" not in record["instruction"]
            kept.add(record["instruction"])
        assert summary.prompt_tokens > 0 and summary.completion_tokens > 0
        saved = json.loads(datagen.summary_path(out).read_text())
        assert saved["kept"] == 12 and saved["dropped"]["malformed"] == 3 and saved["stopped"] == "done"
        loaded = load_records(out, DataConfig(path=str(out)))
        assert loaded.shape == "alpaca" and len(loaded.records) == 12 and not loaded.skipped

    def test_rerun_with_more_requested_appends_only_the_missing(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher() as server:
            config = teacher_config(server)
            api.generate_self_instruct(str(SEEDS), str(out), config,
                                       SelfInstructConfig(num_examples=4, tasks_per_request=4), progress=False)
            first = read_lines(out)
            summary = api.generate_self_instruct(str(SEEDS), str(out), config,
                                                 SelfInstructConfig(num_examples=4, tasks_per_request=4),
                                                 progress=False)
            assert summary.requests == 0 and read_lines(out) == first
            summary = api.generate_self_instruct(str(SEEDS), str(out), config,
                                                 SelfInstructConfig(num_examples=10, tasks_per_request=4),
                                                 progress=False)
        records = read_lines(out)
        assert records[:4] == first and len(records) == 10 and summary.existing == 4 and summary.kept == 6
        assert len({r["instruction"] for r in records}) == 10

    @pytest.mark.parametrize("mode, reason", [("error500", "HTTP 500"), ("badbody", "bad answer body")])
    def test_failing_teacher_is_retried_then_summarized(self, tmp_path, mode, reason):
        out = tmp_path / "gen.jsonl"
        with fake_teacher(mode) as server:
            summary = api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server),
                                                 SelfInstructConfig(num_examples=50), progress=False)
            # gives up after 4 failed requests in a row, each tried 1 + max_retries times
            assert server.requests() == 4 * 3
        assert summary.failed_requests == 4 and summary.retries == 8 and summary.kept == 0
        assert summary.stopped.startswith("gave up after 4 failed requests")
        assert reason in summary.last_failure and "4 failed" in summary.text()
        assert json.loads(datagen.summary_path(out).read_text())["failed_requests"] == 4

    def test_garbage_answers_are_counted_not_fatal(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher("garbage") as server:
            summary = api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server),
                                                 SelfInstructConfig(num_examples=50, max_requests=5),
                                                 progress=False)
            assert server.requests() == 5
        assert summary.dropped["malformed"] == 5 and summary.kept == 0 and summary.failed_requests == 0
        assert summary.stopped == "max_requests=5 reached before 50 examples"

    def test_task_cut_off_by_max_tokens_is_dropped(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher("cutoff") as server:
            summary = api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server, concurrency=1),
                                                 SelfInstructConfig(num_examples=3, tasks_per_request=3),
                                                 progress=False)
        # the reply ends inside the image task's output: that task is dropped as truncated, not judged
        assert summary.requests == 1 and summary.dropped["truncated"] == 1
        assert summary.dropped["malformed"] == 0 and summary.dropped["unsupported"] == 0
        assert summary.kept == 3 and summary.dropped["not_needed"] == 2  # the paraphrase and the seed copy

    def test_rate_limits_and_500s_are_retried_to_success(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher("flaky") as server:
            summary = api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server, concurrency=1),
                                                 SelfInstructConfig(num_examples=6, tasks_per_request=3),
                                                 progress=False)
        assert summary.failed_requests == 0 and summary.retries == 4 and summary.requests == 2
        assert len(read_lines(out)) == 6

    def test_rejected_key_is_a_clear_error_not_a_retry_loop(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MY_TEACHER_KEY", "sk-wrong")
        out = tmp_path / "gen.jsonl"
        with fake_teacher("unauthorized") as server:
            with pytest.raises(ConfigError, match=r"HTTP 401.*\$MY_TEACHER_KEY"):
                api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server, key_env="MY_TEACHER_KEY"),
                                           SelfInstructConfig(num_examples=5), progress=False)
            assert server.requests() <= 2
        assert "HTTP 401" in json.loads(datagen.summary_path(out).read_text())["stopped"]

    def test_killed_generator_resumes_without_torn_lines_or_duplicates(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        argv = ["--seeds", str(SEEDS), "-n", "24", "--out", str(out), "--tasks-per-request", "2",
                "--concurrency", "2", "--backoff", "0.01", "--no-progress"]
        with fake_teacher("good", delay=0.25) as server:
            argv += ["--teacher-url", server.url]
            process = _start_cli("self-instruct", argv)
            _kill_when(process, lambda: out.is_file() and len(out.read_bytes().splitlines()) >= 3)
            with open(out, "ab") as f:  # and a write torn half-way, as a crash in the middle of a line leaves
                f.write(b'{"instruction": "Half a rec')
            before = out.read_bytes().rsplit(b"\n", 1)[0].splitlines()
            assert 3 <= len(before) < 24
            rerun = _start_cli("self-instruct", argv)
            assert rerun.wait(timeout=60) == 0, rerun.stderr.read()
        records = read_lines(out)
        assert len(records) == 24
        assert [json.dumps(r) for r in records[:len(before)]] == [json.dumps(json.loads(b)) for b in before]
        assert len({r["instruction"] for r in records}) == 24
        summary = json.loads(datagen.summary_path(out).read_text())
        assert summary["existing"] == len(before) and summary["total"] == 24


    def test_ctrl_c_keeps_what_was_written_and_says_so(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher("good", delay=0.25) as server:
            # 400 examples take ~12 s at this teacher's pace, so the run is still going when Ctrl-C comes (with
            # 40, a loaded machine once let it finish first and exit 0).
            process = _start_cli("self-instruct", ["--seeds", str(SEEDS), "-n", "400", "--out", str(out),
                                                   "--tasks-per-request", "2", "--teacher-url", server.url,
                                                   "--no-progress"])
            _kill_when(process, lambda: out.is_file() and out.stat().st_size > 0, sig=signal.SIGINT)
            assert process.wait(timeout=30) == 130
            assert process.stderr.read().strip().splitlines()[-1] == "interrupted"
        records = read_lines(out)
        summary = json.loads(datagen.summary_path(out).read_text())
        assert summary["stopped"].startswith("interrupted") and summary["total"] == len(records) >= 1


class TestLocalTeacher:
    def test_in_process_model_as_teacher(self, tiny_model_dir, tmp_path):
        out = tmp_path / "gen.jsonl"
        teacher = TeacherConfig(local=str(tiny_model_dir), concurrency=2, max_tokens=8)
        summary = api.generate_self_instruct(str(SEEDS), str(out), teacher,
                                             SelfInstructConfig(num_examples=5, max_requests=2), progress=False)
        assert summary.teacher == f"local:{tiny_model_dir}" and summary.requests == 2
        assert summary.prompt_tokens > 200 and 0 < summary.completion_tokens <= 16
        assert summary.dropped["malformed"] == 2 and summary.failed_requests == 0  # a random model's gibberish


class TestFromDocsLive:
    def test_output_shape_sources_dedup_and_data_layer(self, tmp_path):
        out = tmp_path / "qa.jsonl"
        chunks = datagen.collect_chunks(DOCS, 512)
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
            summary = api.generate_qa_from_docs(str(docs), str(out), teacher_config(server, max_retries=1,
                                                                                     timeout_s=0.3),
                                                FromDocsConfig(chunk_tokens=32), progress=False)
            assert time.monotonic() - started < 5
        assert summary.failed_requests == 2 and summary.retries == 2 and summary.details["chunks_failed"] == 2
        assert "timed out after 0.3 s" in summary.last_failure and summary.kept == 0
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
            process = _start_cli("from-docs", argv)
            _kill_when(process, lambda: out.is_file() and len(out.read_bytes().splitlines()) >= 2)
            # also cut the last chunk's group short, as a kill between two of its lines would
            lines = out.read_bytes().rsplit(b"\n", 1)[0].splitlines()
            out.write_bytes(b"\n".join(lines[:-1]) + b"\n" + b'{"question": "torn')
            rerun = _start_cli("from-docs", argv)
            assert rerun.wait(timeout=60) == 0, rerun.stderr.read()
        records = read_lines(out)
        chunk_ids = [c.id for c in datagen.collect_chunks(docs, 32)]
        assert len(chunk_ids) == 12  # the title has no text of its own: it joins the first part
        assert sorted({r["chunk_id"] for r in records}) == sorted(chunk_ids)
        assert len(records) == 3 * len(chunk_ids)
        assert len({r["question"] for r in records}) == len(records)
        for chunk_id in chunk_ids:
            assert [r["provenance"]["pair"] for r in records if r["chunk_id"] == chunk_id] == [1, 2, 3]


def _start_cli(target: str, argv: list[str]) -> subprocess.Popen:
    """`tunesmith generate TARGET ...` as its own process, the way a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "tunesmith", "generate", target, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def _kill_when(process: subprocess.Popen, ready, timeout_s: float = 60, sig: int = signal.SIGKILL) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, f"generator ended before it could be killed: {process.stderr.read()}"
        assert time.monotonic() < deadline, "generator wrote nothing in time"
        time.sleep(0.02)
    process.send_signal(sig)
    if sig == signal.SIGKILL:
        assert process.wait(timeout=10) == -signal.SIGKILL


# ------------------------------------------------------------------------------------------------ CLI


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
    assert json.loads(datagen.summary_path(out).read_text())["requests"] == 1
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("The library opens at nine and closes at eight on weekdays.")
    summary = api.generate_qa_from_docs(str(docs), str(tmp_path / "qa.jsonl"), teacher,
                                        FromDocsConfig(per_chunk=1, grade=True), progress=False)
    assert summary.requests == 1 and summary.dropped["malformed"] == 1 and summary.kept == 0
    assert summary.details["chunks_failed"] == 0 and summary.prompt_tokens > 0
