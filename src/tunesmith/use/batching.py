"""The one thread that runs the served model, and the jobs that wait for it.

Requests wait in a bounded queue; the worker takes every waiting request with the same decoding options (up to
`batch_size` answers) and answers them in one `generate_batch` call, so the model never runs two generations at
once and concurrent clients share batches. Streaming requests run on the same worker, one at a time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

from tunesmith.use.generation import Generation, GenerationOptions, Generator
from tunesmith.use.openai_protocol import APIError


@dataclass(eq=False)
class Job:
    """Answers one request wants: one prompt per choice, delivered to the request's event loop."""

    prompts: list[str]
    options: GenerationOptions
    stream: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def deliver(self, generations: list[Generation] | None = None, error: BaseException | None = None) -> None:
        def settle():
            if self.future.done():  # the client went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(generations)
        self.loop.call_soon_threadsafe(settle)

    def emit(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class BatchWorker:
    """The only thread that touches the model: it batches waiting requests with equal decoding options."""

    def __init__(self, generator: Generator, batch_size: int, max_queue: int):
        self.generator, self.batch_size = generator, batch_size
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._held: deque[Job] = deque()
        self._thread = threading.Thread(target=self._loop, name="tunesmith-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse with 429 when too many are waiting already."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(429, "the server has too many waiting requests; retry shortly",
                           type="rate_limit_error", code="queue_full") from None

    def _next(self, block: bool) -> Job | None:
        if self._held:
            return self._held.popleft()
        return self._queue.get() if block else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            job = self._next(block=True)
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            if job.stream:
                self._run_stream(job)
                continue
            batch, stopping = self._gather(job)
            self._run_batch(batch)
            if stopping:
                return

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """`first` plus waiting jobs with the same options, up to batch_size answers; others wait their turn."""
        batch, size, skipped, stopping = [first], len(first.prompts), [], False
        while size < self.batch_size:
            try:
                job = self._next(block=False)
            except queue.Empty:
                break
            if job is None:
                stopping = True
                break
            if not job.stream and job.options == first.options and size + len(job.prompts) <= self.batch_size:
                batch.append(job)
                size += len(job.prompts)
            else:
                skipped.append(job)
        self._held.extendleft(reversed(skipped))
        return batch, stopping

    def _run_batch(self, batch: list[Job]) -> None:
        # looked up at call time, so tests can stand in a fake generate_batch
        from tunesmith.use.generation import generate_batch

        live = [job for job in batch if not job.cancelled.is_set()]
        prompts = [p for job in live for p in job.prompts]
        try:
            results = (generate_batch(self.generator.model, self.generator.tokenizer, prompts, live[0].options)
                       if prompts else [])
        except Exception as e:  # the model failed: every waiting client hears about it, the server lives on
            for job in live:
                job.deliver(error=e)
            return
        start = 0
        for job in live:
            job.deliver(results[start:start + len(job.prompts)])
            start += len(job.prompts)

    def _run_stream(self, job: Job) -> None:
        try:
            for index, prompt in enumerate(job.prompts):
                with self.generator.stream(prompt, job.options) as stream:
                    for piece in stream:
                        if job.cancelled.is_set():
                            return
                        job.emit(("delta", index, piece))
                    job.emit(("end", index, stream.generation))
        except Exception as e:
            job.emit(("error", 0, e))
        finally:
            job.emit(("done", 0, None))
