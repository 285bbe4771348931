"""The UI's safety rules through its HTTP API: token, Host, GETs that change nothing, paths that stay inside their
folders, bounded uploads; and the config file a New run writes, and a failed run's message."""

from __future__ import annotations

import os
import time

import pytest
import yaml

from tunesmith.config import load_config
from tunesmith.runs import append_jsonl, atomic_write_json, create_run

POST = {"X-Tunesmith-UI": "1"}
"""The header the page sends with every POST."""


def make_stopped_run(work, name="old"):
    """A run folder as an interrupted training leaves it: config, metrics, a checkpoint, status stopped."""
    config = load_config(None, [f"data.path={work / 'data' / 'qa.jsonl'}", f"output.runs_dir={work / 'runs'}",
                                f"output.name={name}"])
    paths = create_run(config)
    for step in (1, 2, 3):
        append_jsonl(paths.metrics, {"step": step, "loss": 3.0 - step / 10, "lr": 1e-4, "tokens_per_s": 100.0})
    (paths.checkpoints / "step-3").mkdir(parents=True)
    (paths.checkpoints / "latest").write_text("step-3")
    atomic_write_json(paths.root / "status.json", {"state": "stopped", "pid": 999_999_999, "step": 3,
                                                   "total_steps": 10, "started": 1.0, "updated": 2.0})
    return paths


class TestToken:
    def test_api_needs_the_token_when_one_is_set(self, make_client):
        client = make_client(token="s3cret")
        assert client.get("/api/runs").status_code == 401
        assert client.get("/api/runs", headers={"X-Tunesmith-Token": "wrong"}).status_code == 401
        assert client.get("/api/runs", headers={"X-Tunesmith-Token": "s3cret"}).status_code == 200
        assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/api/runs?token=s3cret").status_code == 200
        assert client.post("/api/upload?name=a.jsonl", content=b"{}", headers=POST).status_code == 401

    def test_the_page_itself_loads_without_it_and_asks_for_it(self, make_client):
        client = make_client(token="s3cret")
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/runs/old/report.html").status_code == 401

    def test_without_a_token_the_api_is_open(self, make_client):
        assert make_client().get("/api/runs").json() == {"header": [], "runs": []}


class TestRequestOrigin:
    def test_a_post_without_the_page_header_is_refused(self, make_client, work):
        response = make_client().post("/api/upload?name=a.jsonl", content=b"{}\n")
        assert response.status_code == 403 and "X-Tunesmith-UI" in response.json()["error"]
        assert not (work / "uploads").exists()

    def test_an_unknown_host_name_is_refused(self, make_client):
        response = make_client().get("/api/runs", headers={"Host": "attacker.example:7860"})
        assert response.status_code == 400


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_no_get_changes_anything(make_client, work, tiny_model_dir):
    client = make_client()
    make_stopped_run(work)
    before = snapshot(work)
    gets = [r for r in client.app.routes if "GET" in getattr(r, "methods", ())]
    params = {"path": "data/qa.jsonl", "model": str(tiny_model_dir), "run": "old"}
    for route in gets:
        url = route.path.replace("{name}", "old")
        response = client.get(url, params=params)
        assert response.status_code in (200, 404), (url, response.text)
    assert {r.path for r in gets} >= {"/api/runs", "/api/runs/{name}/events", "/api/data/inspect",
                                      "/runs/{name}/report.html", "/api/compare"}
    assert snapshot(work) == before
    assert client.app.state.ui.launcher.processes == {}


def test_every_route_that_changes_something_is_a_post(make_client):
    client = make_client()
    changing = {"/api/runs", "/api/runs/{name}/stop", "/api/runs/{name}/resume", "/api/runs/{name}/report",
                "/api/runs/{name}/chat", "/api/upload"}
    posts = {r.path for r in client.app.routes if "POST" in getattr(r, "methods", ())}
    assert posts == changing
    for path in ("/api/runs/old/stop", "/api/runs/old/resume", "/api/runs/old/report", "/api/upload"):
        assert client.get(path).status_code == 405, path


class TestPathsStayInside:
    @pytest.mark.parametrize("path", ["../secret.jsonl", "/etc/passwd", "data/../../secret.jsonl", "link/x.jsonl"])
    def test_data_outside_the_working_folder(self, make_client, work, path):
        (work.parent / "secret.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
        (work / "link").symlink_to(work.parent)
        client = make_client()
        assert client.get("/api/data/inspect", params={"path": path}).status_code == 403
        response = client.post("/api/runs", json={"data": path}, headers=POST)
        assert response.status_code == 403, response.text
        assert list((work / "runs").iterdir()) == []

    def test_a_run_name_that_leaves_the_runs_folder(self, make_client, work, tmp_path):
        outside = make_stopped_run(work, name="elsewhere").root
        (work / "runs" / "escape").symlink_to(tmp_path)
        client = make_client()
        assert client.get("/api/runs/..%2F..%2Fetc").status_code in (403, 404)
        assert client.get("/api/runs/escape").status_code == 403
        assert client.get("/api/runs/elsewhere").status_code == 200
        assert outside.is_dir()

    def test_a_report_linked_from_outside_is_not_served(self, make_client, work, tmp_path):
        paths = make_stopped_run(work)
        (tmp_path / "private.html").write_text("private")
        paths.report.symlink_to(tmp_path / "private.html")
        assert make_client().get("/runs/old/report.html").status_code == 403

    def test_an_upload_name_with_a_folder(self, make_client, work):
        response = make_client().post("/api/upload?name=../evil.jsonl", content=b"{}\n", headers=POST)
        assert response.status_code == 400
        assert not (work.parent / "evil.jsonl").exists()

    def test_data_files_are_listed_without_the_runs_and_hidden_folders(self, make_client, work):
        (work / ".venv").mkdir()
        (work / ".venv" / "x.jsonl").write_text("{}\n")
        (work / "runs" / "r.jsonl").write_text("{}\n")
        assert make_client().get("/api/data").json()["files"] == ["data/qa.jsonl"]


class TestUpload:
    def test_an_upload_lands_under_uploads_and_is_listed(self, make_client, work):
        client = make_client()
        body = b'{"prompt": "p", "response": "r"}\n'
        first = client.post("/api/upload?name=mine.jsonl", content=body, headers=POST).json()
        second = client.post("/api/upload?name=mine.jsonl", content=body, headers=POST).json()
        assert (first["path"], second["path"]) == ("uploads/mine.jsonl", "uploads/mine-1.jsonl")
        assert (work / "uploads" / "mine.jsonl").read_bytes() == body
        assert "uploads/mine.jsonl" in client.get("/api/data").json()["files"]

    def test_too_big_is_413_and_writes_nothing(self, make_client, work):
        client = make_client(max_upload_bytes=1000)
        response = client.post("/api/upload?name=big.jsonl", content=b"x" * 1001, headers=POST)
        assert response.status_code == 413

        def chunks():  # no Content-Length: the size is counted as the body arrives
            for _ in range(5):
                yield b"y" * 400

        assert client.post("/api/upload?name=big.jsonl", content=chunks(), headers=POST).status_code == 413
        assert not (work / "uploads").exists() or list((work / "uploads").iterdir()) == []

    def test_other_bodies_are_capped_too(self, make_client):
        response = make_client().post("/api/runs", content=b"[" + b"1," * 600_000 + b"1]",
                                      headers={**POST, "Content-Type": "application/json"})
        assert response.status_code == 413


class TestNewRun:
    def test_invalid_settings_are_all_reported_and_nothing_is_written(self, make_client, work):
        response = make_client().post("/api/runs", headers=POST, json={
            "data": "data/qa.jsonl", "name": "bad", "settings": ["training.batch_size=0", "training.nope=1"]})
        assert response.status_code == 400
        assert "batch_size" in response.json()["error"] and "nope" in response.json()["error"]
        assert list((work / "runs").iterdir()) == []

    def test_a_taken_name_is_a_conflict(self, make_client, work):
        make_stopped_run(work, name="taken")
        response = make_client().post("/api/runs", headers=POST, json={"data": "data/qa.jsonl", "name": "taken"})
        assert response.status_code == 409

    def test_a_failed_run_shows_its_error_and_last_log_lines(self, make_client, work, tiny_model_dir):
        (work / "data" / "broken.jsonl").write_text('{"question": "q"}\n{oops\n')
        client = make_client()
        response = client.post("/api/runs", headers=POST, json={
            "data": "data/broken.jsonl", "model": str(tiny_model_dir), "name": "broken", "max_steps": 2})
        assert response.status_code == 200, response.text
        config = yaml.safe_load((work / "runs" / "broken.yaml").read_text())
        assert config["data"]["path"] == os.path.join("..", "data", "broken.jsonl")
        assert config["output"] == {"runs_dir": "runs", "name": "broken"}
        assert config["training"] == {"method": "lora", "max_steps": 2}
        deadline = time.time() + 120
        while (run := client.get("/api/runs/broken").json())["state"] in ("starting", "running"):
            assert time.time() < deadline, run
            time.sleep(0.3)
        assert run["state"] == "failed", run
        assert "exited with code 1" in run["error"]
        assert any("data error" in line or "data problems" in line for line in run["log_tail"]), run["log_tail"]
        assert client.post("/api/runs/broken/stop", headers=POST).status_code == 409


def test_a_stopped_run_is_listed_with_its_progress(make_client, work):
    make_stopped_run(work)
    runs = make_client().get("/api/runs").json()["runs"]
    assert [(r["name"], r["state"], r["step"], r["total_steps"], r["loss"]) for r in runs] == \
        [("old", "stopped", 3, 10, pytest.approx(2.7))]
    assert runs[0]["cells"]["method"] == "lora"


def test_the_events_of_a_finished_stream_end(make_client, work):
    make_stopped_run(work)
    text = make_client().get("/api/runs/old/events").text
    assert "event: metrics" in text and "event: status" in text and text.rstrip().endswith('"stopped"}')
