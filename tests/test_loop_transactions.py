"""The loop's exactly-once bookkeeping in isolation (fake transactions and consumer, no broker): batches share a
transaction up to the commit interval and commit with their offsets; a failed delivery or commit aborts, makes
every batch fetched so far stale and rewinds the fetch; nothing is committed past an aborted transaction."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from pipeline.kafka.transaction import Abortable, Fenced
from pipeline.runtime.batch import Take
from pipeline.runtime.loop import Flight, StageLoop
from pipeline.runtime.stage import TransientError
from tests.test_loop import FakeHandler as LoopHandler
from tests.test_loop import take


class FakeReader:
    topic = "in"

    def __init__(self) -> None:
        self.owned = frozenset({0, 1})
        self.committed: dict[int, int] = {}
        self.rewinds = 0
        self.on_revoke = self.on_lost = None

    def commit_point(self, partition: int, offset: int) -> int:
        return offset

    def rewind(self) -> None:
        self.rewinds += 1


class FakeTransactions:
    def __init__(self) -> None:
        self.open = False
        self.calls: list[str] = []
        self.commits: list[dict[int, int]] = []
        self.fail_commit: Exception | None = None

    def init(self) -> None:
        self.calls.append("init")

    def begin(self) -> None:
        if not self.open:
            self.calls.append("begin")
            self.open = True

    def commit(self, offsets: list) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        self.calls.append("commit")
        self.commits.append({tp.partition: tp.offset for tp in offsets})
        self.open = False

    def abort(self) -> bool:
        self.calls.append("abort")
        self.open = False
        return True


class FakeHandler(LoopHandler):
    class sender:
        @staticmethod
        def discard() -> None:
            pass

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.delivered: list[Take] = []
        self.fail: set[int] = set()  # ids of takes whose delivery fails
        self.outcomes: Counter[str] = Counter()
        outcomes = self.outcomes

        class Metrics:
            @staticmethod
            def transactions(outcome: str):
                class Inc:
                    @staticmethod
                    def inc() -> None:
                        outcomes[outcome] += 1
                return Inc

        self.m = Metrics

    def deliver_once(self, take: Take) -> None:
        if id(take) in self.fail:
            raise TransientError("injected delivery failure")
        self.delivered.append(take)

    def stuck(self, step: str, stuck: bool) -> None:
        pass

    def settle(self) -> str | None:
        return None


def make_loop(interval_ms: int, crashed: list | None = None) -> tuple[StageLoop, FakeTransactions]:
    txn = FakeTransactions()

    def on_crash(exc: BaseException, takes: list[Take]):
        if crashed is None:
            raise AssertionError(f"crashed: {exc!r}")
        crashed.append(exc)  # the delivery thread ends after the crash call, as the process would

    loop = StageLoop(FakeHandler(), FakeReader(), depth=8, feed=lambda flight: None, crash=on_crash,
                     transactions=txn, commit_interval_ms=interval_ms)
    loop._backoff = 0.01
    loop._deliverer.start()
    return loop, txn


def send(loop: StageLoop, *records: tuple[int, int]) -> Flight:
    """A flight fetched now and handed to delivery (processed)."""
    loop.slots.acquire()
    flight = Flight(take(*records), loop.generation)
    with loop.changed:
        loop.flights.append(flight)
    loop.deliveries.put(flight)
    return flight


def settle(loop: StageLoop, *flights: Flight, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(f.committed or f.abandoned for f in flights):
            return
        time.sleep(0.01)
    raise AssertionError("flights did not settle")


@pytest.fixture
def stopper():
    loops: list[StageLoop] = []
    yield loops.append
    for loop in loops:
        loop.stopping.set()
        loop.deliveries.put(None)
        loop._deliverer.join(5)


def test_batches_share_one_transaction_committed_with_their_offsets_at_the_interval(stopper) -> None:
    loop, txn = make_loop(interval_ms=300)
    stopper(loop)
    a, b = send(loop, (0, 5), (1, 7)), send(loop, (0, 6))
    time.sleep(0.1)
    assert a.delivered and b.delivered and not (a.committed or b.committed)  # inside the open transaction
    settle(loop, a, b)
    assert txn.calls == ["init", "begin", "commit"]
    assert txn.commits == [{0: 7, 1: 8}]
    assert loop.reader.committed == {0: 7, 1: 8}
    assert loop.handler.outcomes == Counter(committed=1)


def test_a_failed_delivery_aborts_and_everything_fetched_before_the_rewind_is_stale(stopper) -> None:
    loop, txn = make_loop(interval_ms=60_000)
    stopper(loop)
    a = send(loop, (0, 1))
    failing = send(loop, (0, 2))
    loop.handler.fail.add(id(failing.take))
    later = send(loop, (1, 3))  # fetched before the abort, so it is part of what is processed again
    settle(loop, a, failing, later)
    assert a.abandoned and failing.abandoned and later.abandoned and not a.committed
    assert txn.calls == ["init", "begin", "abort"] and txn.commits == []  # nothing committed past the abort
    assert [t for t in loop.handler.delivered] == [a.take]  # `later` was never delivered
    assert loop.rewind_needed
    loop._rewind()  # the fetch thread goes back to the committed offsets; new flights are current again
    assert loop.reader.rewinds == 1 and not loop.rewind_needed
    again = send(loop, (0, 1), (0, 2))
    assert loop._request(commit=True, timeout=5)
    assert again.committed and txn.commits == [{0: 3}]
    assert loop.handler.outcomes == Counter(aborted=1, committed=1)


def test_an_abortable_commit_abandons_its_batches(stopper) -> None:
    loop, txn = make_loop(interval_ms=60_000)
    stopper(loop)
    txn.fail_commit = Abortable("send offsets: the group's generation is not valid")
    a = send(loop, (0, 1))
    assert not loop._request(commit=True, timeout=5)
    assert a.abandoned and not a.committed and loop.rewind_needed and "abort" in txn.calls


def test_lost_partitions_abort_the_open_transaction(stopper) -> None:
    loop, txn = make_loop(interval_ms=60_000)
    stopper(loop)
    a = send(loop, (0, 1))
    time.sleep(0.1)
    loop._on_lost(frozenset({0}))
    assert a.abandoned and txn.calls[-1] == "abort" and txn.commits == []


def test_a_fenced_producer_crashes_the_worker() -> None:
    crashed: list[BaseException] = []
    loop, txn = make_loop(interval_ms=0, crashed=crashed)
    txn.fail_commit = Fenced("fenced by a newer instance")
    send(loop, (0, 1))
    loop._deliverer.join(5)
    assert len(crashed) == 1 and isinstance(crashed[0], Fenced)


def test_lost_partitions_make_a_batch_still_in_the_model_stale(stopper) -> None:
    loop, txn = make_loop(interval_ms=60_000)
    stopper(loop)
    in_model = Flight(take((0, 4)), loop.generation)  # fetched before the loss, not yet delivered
    loop.slots.acquire()
    loop._on_lost(frozenset({0}))
    loop.deliveries.put(in_model)  # the model finishes it after the loss
    settle(loop, in_model)
    assert in_model.abandoned and loop.handler.delivered == [] and txn.commits == [] and loop.rewind_needed


def test_records_not_acknowledged_at_the_commit_abort_it(stopper) -> None:
    loop, txn = make_loop(interval_ms=60_000)
    stopper(loop)
    loop.handler.settle = lambda: "1 record(s) unacknowledged, 0 failed: "
    a = send(loop, (0, 1))
    assert not loop._request(commit=True, timeout=5)
    assert a.abandoned and txn.commits == [] and txn.calls[-1] == "abort" and loop.rewind_needed
