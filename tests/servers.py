"""`tunesmith serve` as a real process for tests that talk to it over HTTP (the generators, the lifecycle)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tunesmith_serve(model: Path | str, *flags: str):
    """`tunesmith serve MODEL [flags]` as its own process (the project's own server as a teacher); yields its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", str(model), "--port", str(port), *flags],
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
