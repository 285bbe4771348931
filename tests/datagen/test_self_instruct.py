"""Self-instruct: seed files, then the generator end to end against the scripted teacher server (filters,
provenance, retries, failures, resume after a kill or Ctrl-C)."""

from __future__ import annotations

import json
import signal

import pytest

from tunesmith import api
from tunesmith.config import DataConfig, SelfInstructConfig
from tunesmith.data import load_records
from tunesmith.datagen.filters import RougeFilter
from tunesmith.datagen.output import summary_path
from tunesmith.datagen.parsing import Task
from tunesmith.datagen.self_instruct import load_seed_tasks
from tunesmith.errors import ConfigError, DataError, TeacherError

from teacher_servers import SEEDS, fake_teacher, kill_when, read_lines, start_cli, teacher_config


class TestSeeds:
    def test_stanford_form_and_data_layer_shapes(self, tmp_path):
        stanford = load_seed_tasks(SEEDS)
        assert len(stanford) == 16 and stanford[0].id == "seed_task_0" and stanford[0].output
        alpaca = tmp_path / "seeds.jsonl"
        alpaca.write_text(json.dumps({"instruction": "Add.", "input": "2, 3", "output": "5"}) + "\n")
        assert load_seed_tasks(alpaca) == [Task("Add.", "2, 3", "5", id=f"{alpaca}:1")]
        chat = tmp_path / "chat.jsonl"
        chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                                 {"role": "assistant", "content": "Hello."}]}) + "\n")
        assert load_seed_tasks(chat) == [Task("Hi?", "", "Hello.", id=f"{chat}:1")]

    def test_bad_stanford_instance_names_file_line_and_field(self, tmp_path):
        path = tmp_path / "seeds.jsonl"
        path.write_text(json.dumps({"instruction": "ok", "instances": [{"input": "", "output": "x"}]}) + "\n"
                        + json.dumps({"instruction": "bad", "instances": []}) + "\n")
        with pytest.raises(DataError, match=r"seeds.jsonl:2: instances"):
            load_seed_tasks(path)
        path.write_text(json.dumps({"instruction": "ok", "instances": [{"input": "", "output": "x"}]}) + "\n{oops\n")
        with pytest.raises(DataError, match=r"seeds.jsonl:2: invalid JSON"):
            load_seed_tasks(path)


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
        saved = json.loads(summary_path(out).read_text())
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
            with pytest.raises(TeacherError, match=rf"4 of 4 requests .* failed .*last failure: {reason}") as e:
                api.generate_self_instruct(str(SEEDS), str(out), teacher_config(server),
                                           SelfInstructConfig(num_examples=50), progress=False)
            # gives up after 4 failed requests in a row, each tried 1 + max_retries times
            assert server.requests() == 4 * 3
        summary = json.loads(summary_path(out).read_text())
        assert summary["failed_requests"] == 4 and summary["retries"] == 8 and summary["kept"] == 0
        assert summary["stopped"].startswith("gave up after 4 failed requests")
        assert reason in summary["last_failure"] and "4 failed" in e.value.report

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
        assert "HTTP 401" in json.loads(summary_path(out).read_text())["stopped"]

    def test_killed_generator_resumes_without_torn_lines_or_duplicates(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        argv = ["--seeds", str(SEEDS), "-n", "24", "--out", str(out), "--tasks-per-request", "2",
                "--concurrency", "2", "--backoff", "0.01", "--no-progress"]
        with fake_teacher("good", delay=0.25) as server:
            argv += ["--teacher-url", server.url]
            process = start_cli("self-instruct", argv)
            kill_when(process, lambda: out.is_file() and len(out.read_bytes().splitlines()) >= 3)
            with open(out, "ab") as f:  # and a write torn half-way, as a crash in the middle of a line leaves
                f.write(b'{"instruction": "Half a rec')
            before = out.read_bytes().rsplit(b"\n", 1)[0].splitlines()
            assert 3 <= len(before) < 24
            rerun = start_cli("self-instruct", argv)
            assert rerun.wait(timeout=60) == 0, rerun.stderr.read()
        records = read_lines(out)
        assert len(records) == 24
        assert [json.dumps(r) for r in records[:len(before)]] == [json.dumps(json.loads(b)) for b in before]
        assert len({r["instruction"] for r in records}) == 24
        summary = json.loads(summary_path(out).read_text())
        assert summary["existing"] == len(before) and summary["total"] == 24


    def test_ctrl_c_keeps_what_was_written_and_says_so(self, tmp_path):
        out = tmp_path / "gen.jsonl"
        with fake_teacher("good", delay=0.25) as server:
            # 400 examples take ~12 s at this teacher's pace, so the run is still going when Ctrl-C comes (with
            # 40, a loaded machine once let it finish first and exit 0).
            process = start_cli("self-instruct", ["--seeds", str(SEEDS), "-n", "400", "--out", str(out),
                                                   "--tasks-per-request", "2", "--teacher-url", server.url,
                                                   "--no-progress"])
            kill_when(process, lambda: out.is_file() and out.stat().st_size > 0, sig=signal.SIGINT)
            assert process.wait(timeout=30) == 130
            assert process.stderr.read().strip().splitlines()[-1] == "interrupted"
        records = read_lines(out)
        summary = json.loads(summary_path(out).read_text())
        assert summary["stopped"].startswith("interrupted") and summary["total"] == len(records) >= 1
