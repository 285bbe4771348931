"""Stopping a run on request, and telling watchers how it stands.

SIGTERM or SIGINT (Ctrl-C) while training does not kill the process: the current optimizer step finishes, a
checkpoint is written and training returns, so `tunesmith train CONFIG --resume` continues exactly there. A second
Ctrl-C interrupts at once. `<run>/status.json` says what the run is doing (running, stopped, finished, failed) to
whoever watches it, such as `tunesmith ui`; the main process writes it atomically.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from tunesmith.runs import RunPaths, atomic_write_json

STATUS_FILE = "status.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """While entered, SIGTERM and SIGINT ask training to stop after the current step instead of killing it.

    Handlers can only be set from the main thread; elsewhere (a notebook's worker thread) signals act as usual.
    """

    def __init__(self):
        self.requested: str | None = None
        """The name of the signal that asked to stop, once one did."""
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number, frame) -> None:
        if self.requested is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.requested = signal.Signals(number).name

    def agreed(self, runtime) -> bool:
        """Whether to stop after this step; with several processes, all stop at the step any one was asked to."""
        if runtime.world == 1:
            return self.requested is not None
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=runtime.device)
        return bool(runtime.accelerator.reduce(flag, reduction="sum").item() > 0)


class RunStatus:
    """Keeps `<run>/status.json`: `{"state", "pid", "step", "total_steps", "start_step", "started", "updated",
    "error"?}`; only the main process writes it (every other process's calls do nothing)."""

    def __init__(self, paths: RunPaths, is_main: bool, total_steps: int):
        self.path, self.is_main, self.total_steps = paths.root / STATUS_FILE, is_main, total_steps
        self.started = self.start_step = None
        self.step = 0

    def running(self, step: int) -> None:
        """Training starts (or resumes) at `step`; ETA counts from here."""
        self.started, self.start_step = time.time(), step
        self.write("running", step)

    @contextlib.contextmanager
    def failing_on_error(self):
        """Record "failed" with the error's message when the block raises (the error goes on)."""
        try:
            yield
        except BaseException as e:
            self.write("failed", self.step, error=str(e) or type(e).__name__)
            raise

    def write(self, state: str, step: int, error: str | None = None) -> None:
        self.step = step
        if not self.is_main:
            return
        status = {"state": state, "pid": os.getpid(), "step": step, "total_steps": self.total_steps,
                  "start_step": self.start_step if self.start_step is not None else step,
                  "started": self.started or time.time(), "updated": time.time()}
        if error is not None:
            status["error"] = error
        atomic_write_json(self.path, status)
