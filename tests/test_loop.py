"""The pipelined loop's bookkeeping in isolation (a fake consumer, no broker): commits in fetch order and never
past a batch that was not delivered, the wait for batches in flight when partitions leave, and the records of
leaving partitions dropped before the model sees them."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.kafka.reader import Raw
from pipeline.runtime.batch import Stopping, Take
from pipeline.runtime.loop import Flight, StageLoop


class FakeReader:
    def __init__(self, owned: set[int]) -> None:
        self.owned = frozenset(owned)
        self.commits: list[tuple[dict[int, int], bool]] = []
        self.on_revoke = None

    def commit(self, offsets: dict[int, int], wait: bool = False) -> None:
        self.commits.append(({p: o for p, o in offsets.items() if p in self.owned}, wait))


class FakeHandler:
    class stage:
        name = "fake"

        class spec:
            class batch:
                max_records, max_wait_ms = 10, 10

    stopping = threading.Event()


def take(*records: tuple[int, int]) -> Take:
    raws = [Raw(None, b"", "in", p, o, 0) for p, o in records]
    return Take(raws, [], raws, [])


def crash(exc: BaseException, takes: list[Take]):
    raise AssertionError(f"crashed: {exc!r}")


@pytest.fixture
def loop() -> StageLoop:
    return StageLoop(FakeHandler(), FakeReader({0, 1}), depth=3, feed=lambda flight: None, crash=crash)


def fly(loop: StageLoop, *records: tuple[int, int]) -> Flight:
    loop.slots.acquire()
    flight = Flight(take(*records))
    loop.flights.append(flight)
    loop.waiting.append(flight)
    return flight


def test_commits_follow_fetch_order_and_stop_at_an_undelivered_batch(loop: StageLoop) -> None:
    a, b, c = fly(loop, (0, 5), (1, 7)), fly(loop, (0, 6)), fly(loop, (1, 8), (0, 7))
    b.delivered = c.delivered = True
    loop._commit_delivered()
    assert loop.reader.commits == []  # a is still in the model: b and c wait behind it
    a.delivered = True
    loop._commit_delivered()
    assert loop.reader.commits == [({0: 8, 1: 9}, False)] and not loop.flights


def test_an_abandoned_batch_is_never_committed_nor_anything_after_it(loop: StageLoop) -> None:
    a, b = fly(loop, (0, 1)), fly(loop, (0, 2))
    loop._abandon(a)
    b.delivered = True
    loop._commit_delivered()
    assert loop.reader.commits == [] and len(loop.flights) == 2


def test_revoke_waits_for_the_batch_in_flight_and_commits_it_before_returning(loop: StageLoop) -> None:
    a = fly(loop, (0, 3), (1, 4))

    def deliver_later() -> None:
        time.sleep(0.3)
        with loop.changed:
            a.delivered = True
            loop.changed.notify_all()

    threading.Thread(target=deliver_later).start()
    started = time.monotonic()
    loop._on_revoke(frozenset({1}))
    assert time.monotonic() - started >= 0.25
    assert loop.reader.commits[-1] == ({0: 4, 1: 5}, True)  # synchronously, while partition 1 is still ours
    assert loop.leaving == frozenset()


def test_records_of_leaving_or_lost_partitions_are_dropped_before_processing(loop: StageLoop) -> None:
    flight = fly(loop, (0, 1), (1, 1), (2, 1), (0, 2))
    loop.leaving = frozenset({1})  # being revoked; 2 is not ours at all (lost)
    assert loop.next_group() == [flight]
    assert [(r.partition, r.offset) for r in flight.take.raws] == [(0, 1), (0, 2)]
    assert flight.take.offsets == {0: 3}


def test_batches_waiting_for_the_model_go_in_one_call_up_to_the_batch_size(loop: StageLoop) -> None:
    """The batch size is 10 records: 4 + 5 fit together, the next 3 wait for the following call."""
    a, b = fly(loop, *[(0, i) for i in range(4)]), fly(loop, *[(1, i) for i in range(5)])
    c = fly(loop, (0, 9), (0, 10), (1, 9))
    assert loop.next_group() == [a, b]
    assert loop.next_group() == [c]
    assert loop.next_group() == []  # its doorbell came after: nothing waits


def test_a_batch_larger_than_the_batch_size_still_goes_alone(loop: StageLoop) -> None:
    big = fly(loop, *[(0, i) for i in range(12)])
    small = fly(loop, (1, 0))
    assert loop.next_group() == [big] and loop.next_group() == [small]


def test_a_stopped_loop_abandons_what_the_model_has_not_started(loop: StageLoop) -> None:
    flight = fly(loop, (0, 1))
    loop.stop()
    assert loop.next_group() == [] and flight.abandoned
    other, more = fly(loop, (0, 2)), fly(loop, (0, 3))
    loop.waiting.clear()
    loop.after_process([other, more], Stopping())
    assert other.abandoned and more.abandoned
    loop.handler.stopping.clear()
