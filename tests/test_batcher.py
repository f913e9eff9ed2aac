"""The gateway's micro-batcher in isolation: a lone request runs at once, concurrent ones share a model call,
the token budget cuts a batch, and a passed deadline gets an error without model time."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.gateway.batcher import MicroBatcher
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.protocol import GatewayError


def _batcher(max_wait_ms: float, budget: int = 10_000, model_s: float = 0.0) -> tuple[MicroBatcher, list[list[str]]]:
    calls: list[list[str]] = []

    async def run_model(serve, texts: list[str], tokens: list[int]) -> list[dict]:
        calls.append(texts)
        await asyncio.sleep(model_s)
        return serve(texts, tokens)

    batcher = MicroBatcher("embed", lambda texts, tokens: [{"text": t} for t in texts], run_model,
                           max_batch=32, max_wait_ms=max_wait_ms, budget=budget, metrics=GatewayMetrics())
    return batcher, calls


async def _with(batcher: MicroBatcher, body) -> object:
    worker = asyncio.create_task(batcher.run())
    try:
        return await body()
    finally:
        worker.cancel()


def test_a_lone_request_does_not_wait_for_company() -> None:
    batcher, calls = _batcher(max_wait_ms=2_000)

    async def one_at_a_time() -> list[float]:
        took = []
        for i in range(3):
            started = time.monotonic()
            assert await batcher.submit(f"q{i}", 3, None) == {"text": f"q{i}"}
            took.append(time.monotonic() - started)
        return took

    took = asyncio.run(_with(batcher, one_at_a_time))
    assert max(took) < 0.5, f"a lone request waited for max_wait: {took}"
    assert calls == [["q0"], ["q1"], ["q2"]]


def test_concurrent_requests_share_model_calls_within_the_budget() -> None:
    batcher, calls = _batcher(max_wait_ms=200, budget=8 * 4, model_s=0.05)

    async def burst() -> list:
        return await asyncio.gather(*(batcher.submit(f"q{i}", 4, None) for i in range(40)))

    replies = asyncio.run(_with(batcher, burst))
    assert [r["text"] for r in replies] == [f"q{i}" for i in range(40)]
    assert sorted(t for call in calls for t in call) == sorted(f"q{i}" for i in range(40))
    assert max(len(call) for call in calls) == 8  # the budget (8 requests of 4 tokens) cuts every batch
    assert len(calls) == 5


def test_a_passed_deadline_gets_an_error_and_no_model_time() -> None:
    batcher, calls = _batcher(max_wait_ms=0)

    async def late() -> None:
        with pytest.raises(GatewayError, match="deadline"):
            await batcher.submit("late", 3, time.monotonic() - 1)

    asyncio.run(_with(batcher, late))
    assert calls == []
