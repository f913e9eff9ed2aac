"""A stage's input as one librdkafka consumer: whole batches from `consume()`, cooperative-sticky assignment,
commits only when asked and only for partitions it still owns, and lag from its own watermarks. Every call is
made from one thread (the loop's fetch thread): librdkafka's rebalance callbacks run inside `consume()` there."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from pipeline.config import Topology
from pipeline.errors import PipelineError
from pipeline.kafka.clients import KAFKA_LOG, consumer

log = logging.getLogger("pipeline.kafka.reader")
Partitions = frozenset[int]
MISSING_TOPIC_EVERY_S = 30.0


@dataclass(slots=True, eq=False)  # not frozen: made for every record, and a frozen dataclass is ~6x slower to make
class Raw:
    """A consumed message as bytes, as the loop hands it on; equal only to itself."""

    key: bytes | None
    value: bytes | None  # None: a tombstone
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class InputReader:
    """The consumer of one stage worker. `on_revoke(partitions)` runs before partitions leave (finish their
    work, commit it); `on_lost(partitions)` when they left without that chance (the session expired)."""

    def __init__(self, topology: Topology, topic: str, group: str,
                 on_revoke: Callable[[Partitions], None] = lambda parts: None,
                 on_lost: Callable[[Partitions], None] = lambda parts: None) -> None:
        self.topic = topic
        self.group = group
        self.on_revoke = on_revoke
        self.on_lost = on_lost
        self.owned: Partitions = frozenset()  # replaced, never mutated: other threads read it without a lock
        self.committed: dict[int, int] = {}  # partition -> the offset this worker (or the group before it) committed
        self._missing_said = 0.0
        # The group's member id and generation, for a transaction's offsets (exactly-once). confluent-kafka blocks
        # consumer_group_metadata() while another thread is in consume(), so this thread refreshes a copy after
        # each fetch and in each rebalance callback (~9 us), and the delivery thread reads the copy.
        self.group_metadata: object | None = None
        # Per owned partition: (the offset after the last record returned, the consumer's position), as of the last
        # fetch; replaced, never mutated. The position runs ahead of the records over what a reader never gets:
        # transaction markers and aborted records. Committing it where all records were handled keeps lag at 0.
        self.fetched: dict[int, tuple[int | None, int]] = {}
        self._ends: dict[int, int] = {}
        self.consumer = consumer(topology, group, **{
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": int(topology.kafka.session_timeout_s * 1000),
            "enable.auto.offset.store": False,
            "on_commit": self._on_commit,
            "error_cb": self._on_error,
        })

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked,
                                on_lost=self._lost)

    def poll(self, max_records: int, timeout: float) -> list[Raw]:
        """Up to `max_records` records, waiting at most `timeout` seconds for them; [] when none came."""
        raws = []
        messages = self.consumer.consume(max_records, timeout)
        self.group_metadata = self.consumer.consumer_group_metadata()
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._on_error(error)
                continue
            raws.append(Raw(msg.key(), msg.value(), msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1]))
        for raw in raws:
            self._ends[raw.partition] = raw.offset + 1
        if self.owned:
            positions = self.consumer.position([TopicPartition(self.topic, p) for p in self.owned])
            self.fetched = {tp.partition: (self._ends.get(tp.partition), tp.offset) for tp in positions}
        return raws

    def commit_point(self, partition: int, offset: int) -> int:
        """Where to commit `partition` once every record before `offset` is handled: past the markers and aborted
        records that follow them when no later record was returned (lag 0 behind a transactional producer)."""
        end, position = self.fetched.get(partition, (None, -1))
        return position if end == offset and position > offset else offset

    def idle_positions(self) -> dict[int, int]:
        """Owned partitions whose position is past their committed offset with no record returned after it
        (only markers or aborted records): where to commit them when nothing is in flight."""
        found = {}
        for partition, (end, position) in self.fetched.items():
            committed = self.committed.get(partition)
            if partition in self.owned and committed is not None and position > max(committed, 0) and \
                    (end is None or end <= committed):
                found[partition] = position
        return found

    def commit(self, offsets: dict[int, int], wait: bool = False) -> None:
        """Commit these next offsets of the partitions this worker still owns; `wait`: synchronously, which
        a rebalance and the shutdown need (a failure is logged: the records are processed again)."""
        mine = [TopicPartition(self.topic, p, self.commit_point(p, o)) for p, o in offsets.items() if p in self.owned]
        if not mine:
            return
        try:
            self.consumer.commit(offsets=mine, asynchronous=not wait)
        except KafkaException as exc:
            log.warning("group %s: commit of %s failed (%s); those records will be processed again",
                        self.group, _describe(mine), exc.args[0].str() if exc.args else exc)
            return
        for tp in mine:
            self.committed[tp.partition] = tp.offset

    def rewind(self) -> None:
        """Fetch every owned partition again from its committed offset (the start where none is committed),
        dropping what was fetched after it: after an aborted transaction, its records are processed again."""
        unknown = [TopicPartition(self.topic, p) for p in self.owned if p not in self.committed]
        if unknown:  # not read at assignment (the broker was away): ask now, or crash and restart from them
            for tp in self.consumer.committed(unknown, timeout=10):
                self.committed[tp.partition] = tp.offset
        self.fetched, self._ends = {}, {}
        for partition in sorted(self.owned):
            offset = self.committed.get(partition, -1)
            self.consumer.seek(TopicPartition(self.topic, partition, offset if offset >= 0 else OFFSET_BEGINNING))
        log.info("group %s: fetching %s again from the committed offsets %s", self.group, self.topic,
                 {p: self.committed.get(p) for p in sorted(self.owned)})

    def lag(self) -> dict[int, int]:
        """Per owned partition: records after the committed offset, from the high watermark of the last fetch
        (no request to the broker). A partition not yet fetched or never committed is left out."""
        found = {}
        for partition in self.owned:
            committed = self.committed.get(partition, -1)
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
            if committed >= 0 and high >= 0:
                found[partition] = max(0, high - committed)
        return found

    def close(self) -> None:
        """Leave the group (its revoke callback runs first)."""
        self.consumer.close()

    def _assigned(self, consumer: object, partitions: list[TopicPartition]) -> None:
        self.group_metadata = self.consumer.consumer_group_metadata()
        mine = [tp for tp in partitions if tp.topic == self.topic]
        if not mine:  # a cooperative rebalance has rounds that add nothing
            return
        try:
            for tp in self.consumer.committed(mine, timeout=10):
                self.committed[tp.partition] = tp.offset
        except KafkaException as exc:  # only the lag figure needs it: it shows after the first commit instead
            log.info("group %s: committed offsets unknown at assignment (%s)", self.group, exc)
        self.owned = self.owned | {tp.partition for tp in mine}
        log.info("group %s: assigned %s; owns %s", self.group, _describe(mine), sorted(self.owned))

    def _revoked(self, consumer: object, partitions: list[TopicPartition]) -> None:
        parts = frozenset(tp.partition for tp in partitions if tp.topic == self.topic)
        self.group_metadata = self.consumer.consumer_group_metadata()
        log.info("group %s: revoking %s", self.group, _describe(partitions))
        self.on_revoke(parts)
        self._forget(parts)

    def _lost(self, consumer: object, partitions: list[TopicPartition]) -> None:
        parts = frozenset(tp.partition for tp in partitions if tp.topic == self.topic)
        log.warning("group %s: lost %s (session expired): their records in hand are neither finished nor "
                    "committed here; the new owner processes them", self.group, _describe(partitions))
        self._forget(parts)
        self.on_lost(parts)

    def _forget(self, parts: Partitions) -> None:
        self.owned = self.owned - parts
        self.fetched = {p: v for p, v in self.fetched.items() if p not in parts}
        for partition in parts:
            self.committed.pop(partition, None)
            self._ends.pop(partition, None)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.warning("group %s: commit of %s failed (%s); those records may be processed again", self.group,
                        _describe(partitions), error.str())

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise PipelineError(f"the consumer of {self.topic} failed for good: {error.str()}")
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:  # the client keeps asking; /ready says 503 meanwhile
            if time.monotonic() - self._missing_said > MISSING_TOPIC_EVERY_S:
                self._missing_said = time.monotonic()
                log.warning("the input topic %s does not exist (yet): waiting for it; `pipeline topics apply` "
                            "creates it", self.topic)
            return
        # Connection errors while the broker is away: the broker watch counts and summarises these lines.
        KAFKA_LOG.warning("consumer of %s: %s", self.topic, error.str())


def _describe(partitions: list[TopicPartition]) -> str:
    """e.g. "docs.raw[0,2]"."""
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{t}[{','.join(map(str, sorted(p)))}]" for t, p in sorted(by_topic.items())) or "nothing"
