"""The pipelined stage loop, as TEI and Infinity keep a GPU fed: while the model works on batch N, batch N+1 is
fetched, decoded and prepared (the fetch thread) and batch N-1 is encoded, produced and acknowledged (the delivery
thread). At most `depth` batches are in flight; offsets are committed in fetch order, each only after its batch's
outputs and dead letters were acknowledged, and never for a partition this worker no longer owns. When the model
gets free, every batch waiting for it goes into its next call, up to the stage's batch size (as TEI's queue and
Triton's dynamic batcher form a batch when the model is ready, not when requests arrive).

    fetch thread:    consume -> decode -> prepare ──feed──> the stage's Faust agent (event loop)
    model thread:                                           process (called by the agent)
    delivery thread:                                        encode -> produce -> flush ──> commit (fetch thread)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NoReturn

from pipeline.kafka.reader import InputReader, Partitions
from pipeline.runtime.batch import BatchHandler, Stopping, Take

log = logging.getLogger("pipeline.runtime")
REVOKE_WAIT_S = 30.0  # the longest a rebalance waits for batches in flight to finish before their partitions go
LAG_EVERY_S = 1.0


class Flight:
    """A take and how far it got: delivered (its offsets may be committed) or abandoned (stopping: never)."""

    __slots__ = ("take", "delivered", "abandoned")

    def __init__(self, take: Take) -> None:
        self.take = take
        self.delivered = False
        self.abandoned = False

    @property
    def pending(self) -> bool:
        return not (self.delivered or self.abandoned)


class StageLoop:
    """Runs the fetch and delivery threads around a stage's agent. The agent calls `handle(flight)` for each
    flight that `feed` handed it, in order; `crash(exc, takes)` ends the process on anything unexpected."""

    def __init__(self, handler: BatchHandler, reader: InputReader, depth: int,
                 feed: Callable[[Flight], None], crash: Callable[[BaseException, list[Take]], NoReturn]) -> None:
        self.handler = handler
        self.reader = reader
        self.reader.on_revoke = self._on_revoke
        self.feed = feed
        self.crash = crash
        self.batch = handler.stage.spec.batch
        self.slots = threading.Semaphore(depth)
        self.flights: deque[Flight] = deque()  # fetched and not yet committed (or abandoned), oldest first
        self.waiting: deque[Flight] = deque()  # fetched and not yet taken by the model, oldest first
        self.changed = threading.Condition()
        self.leaving: Partitions = frozenset()  # partitions being revoked: their records not yet processed are dropped
        self.stopping = threading.Event()
        self.deliveries: queue.Queue[Flight | None] = queue.Queue()
        self._fetcher = threading.Thread(target=self._fetch_main, name="stage-fetch", daemon=True)
        self._deliverer = threading.Thread(target=self._deliver_main, name="stage-delivery", daemon=True)
        self._lag_at = 0.0

    def start(self) -> None:
        self._deliverer.start()
        self._fetcher.start()

    def stop(self) -> None:
        """Stop fetching; the batch the model holds and the one in delivery are finished and committed, the ones
        waiting are left for the next owner (and retries of a transient failure end: that batch stays unacked)."""
        self.stopping.set()
        self.handler.stopping.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the fetch thread drained, committed and closed the consumer."""
        self._fetcher.join(timeout)

    # --- the agent's side (called on the event loop; process runs on the model thread) ---------------------

    def next_group(self) -> list[Flight]:
        """The flights waiting for the model, oldest first, as many as fit the stage's batch size (at least one),
        without records of partitions that are leaving or already gone; none while stopping (they are
        abandoned: the next owner, or this worker restarted, processes them)."""
        with self.changed:
            group = [self.waiting.popleft()] if self.waiting else []
            while self.waiting and sum(len(f.take.raws) for f in group) + len(self.waiting[0].take.raws) <= \
                    self.batch.max_records:
                group.append(self.waiting.popleft())
        if self.stopping.is_set():
            for flight in group:
                self._abandon(flight)
            return []
        for flight in group:
            gone = self.leaving | (frozenset(r.partition for r in flight.take.raws) - self.reader.owned)
            if gone and flight.take.drop(gone):
                log.info("stage %s: dropped records of partitions %s that are leaving this worker",
                         self.handler.stage.name, sorted(gone))
        return group

    def after_process(self, group: list[Flight], error: BaseException | None) -> None:
        """Hand processed flights to delivery; flights whose retries ended with the stop are abandoned."""
        if isinstance(error, Stopping):
            for flight in group:
                self._abandon(flight)
        elif error is not None:
            self.crash(error, [flight.take for flight in group])
        else:
            for flight in group:
                self.deliveries.put(flight)

    # --- threads ------------------------------------------------------------------------------------------

    def _fetch_main(self) -> None:
        try:
            self.reader.subscribe()
            while not self.stopping.is_set():
                self._commit_delivered()
                self._report_lag()
                if not self.slots.acquire(timeout=0.05):
                    continue  # depth reached: the model and delivery are busy; keep committing meanwhile
                raws = self.reader.poll(self.batch.max_records, self.batch.max_wait_ms / 1000)
                if not raws:
                    self.slots.release()
                    continue
                flight = Flight(self.handler.decode(raws))
                with self.changed:
                    self.flights.append(flight)
                    self.waiting.append(flight)
                self.feed(flight)  # the agent's doorbell: it takes what waits when the model is free
            self._drain()
        except BaseException as exc:  # noqa: BLE001 - the crash path is the point
            self.crash(exc, self._in_flight())

    def _deliver_main(self) -> None:
        while True:
            flight = self.deliveries.get()
            if flight is None:
                return
            try:
                self.handler.deliver(flight.take)
            except Stopping:
                self._abandon(flight)
                continue
            except BaseException as exc:  # noqa: BLE001
                self.crash(exc, self._in_flight())
            with self.changed:
                flight.delivered = True
                self.changed.notify_all()
            self.slots.release()

    def _abandon(self, flight: Flight) -> None:
        with self.changed:
            flight.abandoned = True
            self.changed.notify_all()
        self.slots.release()

    # --- commits (fetch thread only) -------------------------------------------------------------------------

    def _commit_delivered(self, wait: bool = False) -> None:
        """Commit the offsets of the delivered flights at the head of the line; a pending or abandoned flight
        stops the line, so a commit never passes a batch that was not acknowledged."""
        offsets: dict[int, int] = {}
        with self.changed:
            while self.flights and self.flights[0].delivered:
                offsets.update(self.flights.popleft().take.offsets)
        if offsets:
            self.reader.commit(offsets, wait)

    def _wait_settled(self, timeout: float | None) -> bool:
        """Wait until no flight is pending, then commit what was delivered, synchronously; False if `timeout`
        passed first (what was delivered by then is committed all the same)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        settled = True
        with self.changed:
            while settled and any(f.pending for f in self.flights):
                settled = deadline is None or time.monotonic() < deadline
                self.changed.wait(0.1)
        self._commit_delivered(wait=True)
        return settled

    def _on_revoke(self, partitions: Partitions) -> None:
        """Partitions are leaving (a rebalance, or the close at shutdown): their records not yet processed are
        dropped, the batches in flight finish and are committed before the callback returns."""
        self.leaving = self.leaving | partitions
        started, in_flight = time.monotonic(), len(self._in_flight())
        try:
            if not self._wait_settled(REVOKE_WAIT_S):
                log.warning("stage %s: a batch still in flight after %.0f s (%s) while partitions %s leave: they go "
                            "without its commit, and their records may be processed twice", self.handler.stage.name,
                            REVOKE_WAIT_S, describe_batch(self._in_flight()), sorted(partitions))
            elif in_flight:
                log.info("stage %s: partitions %s leave after the %d batch(es) in flight finished and were committed "
                         "(%.2f s)", self.handler.stage.name, sorted(partitions), in_flight,
                         time.monotonic() - started)
        finally:
            self.leaving = self.leaving - partitions

    def _drain(self) -> None:
        """After the stop: let what is in hand finish (the shutdown deadline bounds it), commit, leave the group."""
        self._wait_settled(None)
        self.deliveries.put(None)
        self.reader.close()

    def _in_flight(self) -> list[Take]:
        with self.changed:
            return [f.take for f in self.flights if f.pending]

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= LAG_EVERY_S:
            self._lag_at = now
            self.handler.m.set_lag(self.reader.lag(), self.reader.owned)


def describe_batch(takes: list[Take]) -> str:
    """Where batches came from, e.g. "docs.raw[0]@10..14, docs.raw[1]@3..7"."""
    spans: dict[tuple[str, int], list[int]] = {}
    for take in takes:
        for raw in take.raws:
            spans.setdefault((raw.topic, raw.partition), []).append(raw.offset)
    if not spans:
        return "no batch in hand"
    return ", ".join(f"{topic}[{partition}]@{min(offsets)}..{max(offsets)}"
                     for (topic, partition), offsets in sorted(spans.items()))
