"""Fixtures for the UI tests: a working folder with a small question-answer file, and the app over it."""

from __future__ import annotations

import json

import pytest

PAIRS = [("What colour is the Wren kettle?", "Green."), ("How heavy is the Finch toaster?", "1.2 kilograms."),
         ("Who makes the Heron mixer?", "Larkspur makes it."), ("When was the Robin frother released?", "In 2021."),
         ("Where is the Swift blender sold?", "Only in Europe."), ("Is the Crow lamp dimmable?", "Yes."),
         ("Can the Owl fan run all night?", "Yes, quietly."), ("What does the Jay grinder grind?", "Coffee.")]


def write_qa(path, repeat: int = 1):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(repeat):
            for q, a in PAIRS:
                f.write(json.dumps({"question": f"{q} ({i})" if i else q, "answer": a}) + "\n")
    return path


@pytest.fixture
def work(tmp_path):
    """A working folder holding `data/qa.jsonl` (16 records) and an empty `runs/`."""
    folder = tmp_path / "work"
    write_qa(folder / "data" / "qa.jsonl", repeat=2)
    (folder / "runs").mkdir()
    return folder


@pytest.fixture
def make_client(work):
    """`make_client(**create_app options)`: a TestClient at http://127.0.0.1 over `work`."""
    from fastapi.testclient import TestClient

    from tunesmith.ui.app import create_app

    clients = []

    def make(**options):
        app = create_app(work / "runs", work, **options)
        client = TestClient(app, base_url="http://127.0.0.1")
        clients.append(client)
        return client

    yield make
    for client in clients:
        for process in client.app.state.ui.launcher.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        client.close()
