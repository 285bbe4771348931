"""Real processes for the live datagen tests: the scripted `fake_teacher.py` server and `tunesmith generate`.

Test modules import these by name (`from teacher_servers import ...`): pytest puts this folder on sys.path.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tunesmith.config import TeacherConfig


REPO = Path(__file__).resolve().parents[2]
FAKE_TEACHER = Path(__file__).with_name("fake_teacher.py")
SEEDS = REPO / "examples" / "seed_tasks.jsonl"
DOCS = REPO / "examples" / "docs"


class Server:
    """A running teacher server: its base URL (`.../v1`) and process."""

    def __init__(self, url: str, process: subprocess.Popen):
        self.url, self.process = url, process

    def requests(self) -> int:
        """Chat requests the server has received, so tests can check what a generator sent."""
        return self.stats()["requests"]

    def stats(self) -> dict:
        """`{"requests": N, "max_tokens": [what each request asked for, in order]}`."""
        return httpx.get(self.url.removesuffix("/v1") + "/stats", timeout=5).json()


@contextlib.contextmanager
def fake_teacher(mode: str = "good", delay: float = 0.0):
    """`fake_teacher.py --mode MODE` as its own process for the length of a `with` block."""
    process = subprocess.Popen([sys.executable, str(FAKE_TEACHER), "--mode", mode, "--delay", str(delay)],
                               stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield Server(f"http://127.0.0.1:{port}/v1", process)
    finally:
        process.kill()
        process.wait(timeout=10)


def teacher_config(server: Server, **overrides) -> TeacherConfig:
    """A teacher config for `server` with short timeouts and backoff, so failing modes finish fast."""
    settings = dict(url=server.url, concurrency=2, max_retries=2, timeout_s=5.0, backoff_s=0.01)
    return TeacherConfig(**{**settings, **overrides})


def read_lines(path: Path) -> list[dict]:
    """The records of a generator's output, failing on a torn last line."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in data.decode().splitlines()]


def write_docs(folder: Path, sections: int) -> Path:
    """A folder with one markdown manual of `sections` short parts: one chunk each at `chunk_tokens=32`."""
    folder.mkdir()
    body = "\n\n".join(f"## Part {i}\n\nThe part number {i} of the manual explains one setting."
                       for i in range(sections))
    (folder / "manual.md").write_text("# Manual\n\n" + body)
    return folder


def start_cli(target: str, argv: list[str]) -> subprocess.Popen:
    """`tunesmith generate TARGET ...` as its own process, the way a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "tunesmith", "generate", target, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def kill_when(process: subprocess.Popen, ready, timeout_s: float = 60, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to a generator once `ready()` holds (it has written something), as a crash or Ctrl-C would."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, f"generator ended before it could be killed: {process.stderr.read()}"
        assert time.monotonic() < deadline, "generator wrote nothing in time"
        time.sleep(0.02)
    process.send_signal(sig)
    if sig == signal.SIGKILL:
        assert process.wait(timeout=10) == -signal.SIGKILL
