"""Dynamic batching as Triton does it: requests wait at most max_wait for company, a batch is cut at max_batch
requests or the stage's token budget, and a request whose deadline passed gets no model time. A batch waits only
for the company the previous batch had, so a lone client is never held back for max_wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.protocol import GatewayError
from pipeline.runtime.stage import TransientError


@dataclass
class Pending:
    text: str
    tokens: int
    deadline: float | None  # time.monotonic()
    enqueued: float
    future: asyncio.Future


class MicroBatcher:
    """One per stage: a queue of texts and a loop that hands batches of them to `run_model` (one at a time)."""

    def __init__(self, stage: str, serve: Callable[[list[str], list[int]], list[dict]],
                 run_model: Callable[..., Awaitable[Any]], max_batch: int, max_wait_ms: float, budget: int,
                 metrics: GatewayMetrics) -> None:
        self.stage, self.serve, self.run_model = stage, serve, run_model
        self.max_batch, self.max_wait, self.budget = max_batch, max_wait_ms / 1000, budget
        self.m = metrics
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._carry: Pending | None = None
        # How many requests the last batch had: the company worth waiting for. One client's request then runs
        # at once, while 32 clients' requests, which arrive together after their replies, are still gathered.
        self._expect = 1

    def submit(self, text: str, tokens: int, deadline: float | None) -> asyncio.Future:
        """A future of the text's result; it raises GatewayError when the request cannot be answered."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Pending(text, tokens, deadline, time.monotonic(), future))
        return future

    async def _next_batch(self) -> list[Pending]:
        first = self._carry or await self.queue.get()
        self._carry = None
        batch, longest = [first], first.tokens
        until = first.enqueued + self.max_wait
        while len(batch) < self.max_batch:
            if self.queue.empty():
                if len(batch) >= self._expect:
                    break
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            if (len(batch) + 1) * max(longest, item.tokens) > self.budget:
                self._carry = item  # first of the next batch
                break
            batch.append(item)
            longest = max(longest, item.tokens)
        self._expect = len(batch)
        return batch

    async def run(self) -> None:
        """Cut and run batches until cancelled."""
        while True:
            batch = await self._next_batch()
            now = time.monotonic()
            live = []
            for item in batch:
                if item.future.done():  # the requester gave up
                    continue
                if item.deadline is not None and now > item.deadline:
                    waited = (now - item.enqueued) * 1000
                    item.future.set_exception(GatewayError(
                        "deadline-exceeded", f"its deadline passed after {waited:.0f} ms in the queue, before a "
                                             "model ran it; retry with a longer Pipeline-Timeout-Ms"))
                    continue
                live.append(item)
            if not live:
                continue
            for item in live:
                self.m.queue_wait.labels(self.stage).observe(now - item.enqueued)
            self.m.batch_size.labels(self.stage).observe(len(live))
            started = time.monotonic()
            try:
                results = await self.run_model(self.serve, [i.text for i in live], [i.tokens for i in live])
            except TransientError as exc:
                error = GatewayError("unavailable", f"stage {self.stage} is overloaded: {exc}")
                results = None
            except Exception as exc:  # noqa: BLE001 - every requester gets an answer, never a timeout
                error = GatewayError("internal", f"stage {self.stage} failed: {type(exc).__name__}: {exc}")
                results = None
            self.m.model_seconds.labels(self.stage).observe(time.monotonic() - started)
            for i, item in enumerate(live):
                if item.future.done():
                    continue
                if results is None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result(results[i])
