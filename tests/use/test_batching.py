"""The batch worker: waiting requests with equal options share one batch, and a full queue is refused."""

from __future__ import annotations

import asyncio

import pytest

from tunesmith.use.batching import BatchWorker, Job
from tunesmith.use.generation import Generation, GenerationOptions
from tunesmith.use.openai_protocol import APIError


class TestBatchWorker:
    """The worker batches waiting requests with equal options and never runs two generations at once."""

    def test_waiting_requests_share_a_batch(self, monkeypatch):
        from tunesmith.use import generation as generate

        calls = []

        def fake_generate_batch(model, tokenizer, prompts, options):
            calls.append((len(prompts), options.max_new_tokens))
            return [Generation(p.upper(), 1, 1, "stop") for p in prompts]

        monkeypatch.setattr(generate, "generate_batch", fake_generate_batch)

        async def scenario():
            loop = asyncio.get_running_loop()
            worker = BatchWorker(generator=type("G", (), {"model": None, "tokenizer": None})(), batch_size=4,
                                 max_queue=100)
            jobs = [Job([f"p{i}"], GenerationOptions(max_new_tokens=5 if i < 6 else 9), False, loop,
                        future=loop.create_future()) for i in range(8)]
            for job in jobs:
                worker.submit(job)
            worker.start()
            results = [await job.future for job in jobs]
            worker.stop()
            return results

        results = asyncio.run(scenario())
        assert [r[0].text for r in results] == [f"P{i}" for i in range(8)]
        assert calls == [(4, 5), (2, 5), (2, 9)]

    def test_full_queue_is_refused_with_429(self):

        worker = BatchWorker(generator=None, batch_size=1, max_queue=1)
        loop = asyncio.new_event_loop()
        try:
            worker.submit(Job(["a"], GenerationOptions(max_new_tokens=4), False, loop))
            with pytest.raises(APIError) as info:
                worker.submit(Job(["b"], GenerationOptions(max_new_tokens=4), False, loop))
            assert info.value.status_code == 429
        finally:
            loop.close()
