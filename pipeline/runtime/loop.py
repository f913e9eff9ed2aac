"""The pipelined stage loop, as TEI and Infinity keep a GPU fed: while the model works on batch N, batch N+1 is
fetched, decoded and prepared (the fetch thread) and batch N-1 is encoded, produced and acknowledged (the delivery
thread). At most `depth` batches are in flight; offsets are committed in fetch order, each only after its batch's
outputs and dead letters were acknowledged, and never for a partition this worker no longer owns. When the model
gets free, every batch waiting for it goes into its next call, up to the stage's batch size (as TEI's queue and
Triton's dynamic batcher form a batch when the model is ready, not when requests arrive).

Exactly-once (`delivery: exactly-once`): the delivery thread produces each batch inside a Kafka transaction and
commits it with the batches' input offsets every commit interval; an abort makes every batch fetched so far
stale, and the fetch thread goes back to the committed offsets (pipeline.kafka.transaction has the error rules).

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

from confluent_kafka import KafkaException, TopicPartition

from pipeline.kafka.reader import InputReader, Partitions
from pipeline.kafka.transaction import Abortable, Stopped, Transactions
from pipeline.runtime.batch import MAX_BACKOFF, BatchHandler, Stopping, Take
from pipeline.runtime.stage import TransientError

log = logging.getLogger("pipeline.runtime")
REVOKE_WAIT_S = 30.0  # the longest a rebalance waits for batches in flight to finish before their partitions go
LAG_EVERY_S = 1.0


class Flight:
    """A take and how far it got: delivered (its offsets may be committed; exactly-once: it is in the open
    transaction), committed (exactly-once: that transaction committed) or abandoned (never committed here)."""

    __slots__ = ("take", "generation", "delivered", "committed", "abandoned")

    def __init__(self, take: Take, generation: int = 0) -> None:
        self.take = take
        self.generation = generation  # exactly-once: the fetch's rewind count; an abort makes older ones stale
        self.delivered = False
        self.committed = False
        self.abandoned = False

    @property
    def pending(self) -> bool:
        return not (self.delivered or self.abandoned)


class StageLoop:
    """Runs the fetch and delivery threads around a stage's agent. The agent calls `handle(flight)` for each
    flight that `feed` handed it, in order; `crash(exc, takes)` ends the process on anything unexpected."""

    def __init__(self, handler: BatchHandler, reader: InputReader, depth: int,
                 feed: Callable[[Flight], None], crash: Callable[[BaseException, list[Take]], NoReturn],
                 transactions: Transactions | None = None, commit_interval_ms: int = 100) -> None:
        self.handler = handler
        self.reader = reader
        self.reader.on_revoke = self._on_revoke
        # Exactly-once: the delivery thread runs each delivery in a transaction that also commits the offsets.
        self.txn = transactions
        self.commit_interval = commit_interval_ms / 1000
        self.generation = 0  # fetch thread: how many times it rewound to the committed offsets
        self.valid_from = 0  # flights of an older generation belong to an aborted transaction: never delivered
        self.rewind_needed = False
        if transactions is not None:
            self.reader.on_lost = self._on_lost
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
        deliver = self._deliver_main if transactions is None else self._deliver_transactions
        self._deliverer = threading.Thread(target=deliver, name="stage-delivery", daemon=True)
        self._lag_at = 0.0
        self._backoff = 0.5  # exactly-once: the pause after an abort, doubled by each abort in a row
        self._sweep: _Request | None = None  # exactly-once: the last commit of idle positions asked for

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
        stale = [flight for flight in group if flight.generation < self.valid_from]
        if stale:
            group = [flight for flight in group if flight.generation >= self.valid_from]
            for flight in stale:
                self._abandon(flight)
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
                if self.rewind_needed:
                    self._rewind()
                self._commit_delivered()
                self._report_lag()
                if not self.slots.acquire(timeout=0.05):
                    continue  # depth reached: the model and delivery are busy; keep committing meanwhile
                raws = self.reader.poll(self.batch.max_records, self.batch.max_wait_ms / 1000)
                if not raws:
                    self.slots.release()
                    continue
                flight = Flight(self.handler.decode(raws), self.generation)
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

    # --- exactly-once (delivery thread) ----------------------------------------------------------------------

    def _deliver_transactions(self) -> None:
        """Deliver flights into one transaction, committed with their offsets every commit interval, when the fetch
        thread asks (a rebalance, the stop) and at the end; an abort makes every flight not committed stale."""
        held: list[Flight] = []  # delivered in the open transaction, in order
        due: float | None = None  # when the open transaction commits
        try:
            self.txn.init()
            while True:
                timeout = None if due is None else max(0.0, due - time.monotonic())
                try:
                    item = self.deliveries.get(timeout=timeout)
                except queue.Empty:
                    item = _Request(commit=True)
                if item is None:
                    self._end_transaction(held, commit=True)
                    return
                if isinstance(item, _Request):
                    try:
                        item.finish(self._end_transaction(held, item.commit, item.offsets))
                    except Stopped:
                        item.finish(False)
                        raise
                    held, due = [], None
                    continue
                if item.generation < self.valid_from:
                    self._abandon(item)
                    continue
                try:
                    self.txn.begin()
                    self.handler.deliver_once(item.take)
                except (TransientError, KafkaException) as exc:
                    if isinstance(exc, KafkaException) and exc.args[0].fatal():
                        raise
                    self._abort(held, item, str(exc))
                    held, due = [], None
                    continue
                with self.changed:
                    item.delivered = True
                    self.changed.notify_all()
                self.slots.release()
                held.append(item)
                due = due or time.monotonic() + self.commit_interval
        except Stopped:  # stopping while the broker is away: the restarted worker's init aborts what is open
            self._abandon_rest(held)
        except BaseException as exc:  # noqa: BLE001 - a fenced producer, or anything unexpected
            self.crash(exc, self._in_flight())

    def _end_transaction(self, held: list[Flight], commit: bool, idle: dict[int, int] | None = None) -> bool:
        """Commit the open transaction with its flights' offsets and the `idle` ones (or abort it); True when
        nothing was lost."""
        if not commit:  # even with no transaction open: a batch in the model may hold records of those partitions
            self._abort(held, None, "its partitions were lost")
            return True
        if not self.txn.open and not idle:
            return True
        offsets: dict[int, int] = {}
        for flight in held:
            offsets.update(flight.take.offsets)
        offsets = {p: self.reader.commit_point(p, o) for p, o in offsets.items()}
        for partition, offset in (idle or {}).items():
            offsets[partition] = max(offsets.get(partition, offset), offset)
        self.txn.begin()
        problem = self.handler.settle()
        if problem is not None:
            self._abort(held, None, problem)
            return False
        topic = self.reader.topic
        try:
            self.txn.commit([TopicPartition(topic, p, o) for p, o in sorted(offsets.items())])
        except Abortable as exc:
            self._abort(held, None, str(exc))
            return False
        with self.changed:
            for flight in held:
                flight.committed = True
            self.changed.notify_all()
        owned = self.reader.owned
        self.reader.committed.update({p: o for p, o in offsets.items() if p in owned})
        self.handler.m.transactions("committed").inc()
        self.handler.stuck("transaction", False)
        self._backoff = 0.5
        return True

    def _abort(self, held: list[Flight], failed: Flight | None, reason: str) -> None:
        """Abort the open transaction: every flight fetched so far is stale, and the fetch thread goes back to
        the committed offsets, so those records are processed again (consecutive aborts back off)."""
        with self.changed:
            self.valid_from = self.generation + 1
            self.rewind_needed = True
            for flight in held:
                flight.abandoned = True
            self.changed.notify_all()
        if failed is not None:
            self._abandon(failed)
        what = "transaction aborted" if self.txn.open else "no transaction open"
        log.warning("stage %s: %s (%s); %s processed again from the last commit", self.handler.stage.name, what,
                    reason, describe_batch([f.take for f in [*held, failed] if f]))
        if not self.txn.open:
            return
        self.txn.abort()
        self.handler.sender.discard()
        self.handler.m.transactions("aborted").inc()
        self.handler.stuck("transaction", True)
        self.stopping.wait(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _abandon_rest(self, held: list[Flight]) -> None:
        """After a stop during a transaction call: nothing more commits here; serve the queue until its end."""
        with self.changed:
            for flight in held:
                flight.abandoned = True
            self.changed.notify_all()
        while (item := self.deliveries.get()) is not None:
            if isinstance(item, _Request):
                item.finish(False)
            else:
                self._abandon(item)

    def _request(self, commit: bool, timeout: float | None) -> bool:
        """From the fetch thread: have the delivery thread commit (or abort) its transaction now; False when it
        did not (an abort, a timeout, or delivery has ended)."""
        if not self._deliverer.is_alive():
            return False
        request = _Request(commit)
        self.deliveries.put(request)
        return request.done.wait(timeout) and request.ok

    def _on_lost(self, partitions: Partitions) -> None:
        """The group moved these partitions on without us (session expired): the open transaction holds records
        of them that their new owner processes too, so it must never commit."""
        self._request(commit=False, timeout=REVOKE_WAIT_S)

    def _rewind(self) -> None:
        """Fetch thread: after an abort, fetch again from the committed offsets (older flights are stale)."""
        with self.changed:
            self.rewind_needed = False
            self.generation += 1
        self.reader.rewind()

    # --- commits (fetch thread only) -------------------------------------------------------------------------

    def _commit_delivered(self, wait: bool = False) -> None:
        """Commit the offsets of the delivered flights at the head of the line; a pending or abandoned flight
        stops the line, so a commit never passes a batch that was not acknowledged. Exactly-once: the delivery
        thread commits; `wait` asks it to commit now, and the line only forgets what is committed or abandoned."""
        if self.txn is not None:
            if wait:
                self._request(commit=True, timeout=REVOKE_WAIT_S)
            with self.changed:
                while self.flights and (self.flights[0].committed or self.flights[0].abandoned):
                    self.flights.popleft()
            return
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
        self.reader.close()  # its revoke callback commits what was settled
        self.deliveries.put(None)

    def _in_flight(self) -> list[Take]:
        with self.changed:
            return [f.take for f in self.flights if f.pending]

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= LAG_EVERY_S:
            self._lag_at = now
            self._commit_idle()
            self.handler.m.set_lag(self.reader.lag(), self.reader.owned)

    def _commit_idle(self) -> None:
        """With nothing in flight, commit partitions whose position moved past the committed offset over
        transaction markers only (an upstream stage's exactly-once commits), so their lag reads 0."""
        with self.changed:
            busy = bool(self.flights) or self.rewind_needed or self.stopping.is_set()
        if busy or (self._sweep is not None and not self._sweep.done.is_set()):
            return
        idle = self.reader.idle_positions()
        if not idle:
            return
        if self.txn is None:
            self.reader.commit(idle)
        else:  # in a transaction of its own; not waited for
            self._sweep = _Request(commit=True, offsets=idle)
            self.deliveries.put(self._sweep)


class _Request:
    """A commit (or abort) asked of the delivery thread, with offsets to add, and its answer."""

    __slots__ = ("commit", "offsets", "done", "ok")

    def __init__(self, commit: bool, offsets: dict[int, int] | None = None) -> None:
        self.commit = commit
        self.offsets = offsets or {}
        self.done = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.done.set()


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
