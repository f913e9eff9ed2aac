"""Committed offsets, log end offsets and lag of each stage's consumer group, read from the broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.kafka.clients import admin, consumer
from pipeline.config import Topology
from pipeline.errors import KafkaUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    start: int
    end: int

    @property
    def lag(self) -> int:
        position = self.committed if self.committed is not None and self.committed >= 0 else self.start
        return max(0, self.end - position)


_COORDINATOR_MOVING = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                       KafkaError.COORDINATOR_NOT_AVAILABLE}


def stage_lag(topology: Topology, stage: str, timeout: float = 10) -> list[PartitionLag]:
    """Per input partition of `stage`: where its group committed, the log's range, and the lag."""
    spec = topology.stages[stage]
    return group_lag(topology, spec.group, spec.input, timeout)


def group_lag(topology: Topology, group: str, topic: str, timeout: float = 10) -> list[PartitionLag]:
    """Per partition of `topic`: where `group` committed, the log's range, and the lag."""
    probe = consumer(topology, group=group)  # never subscribes, so it does not join the group
    try:
        meta = probe.list_topics(topic, timeout=timeout)
        partitions = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        committed = _retrying(lambda: probe.committed(partitions, timeout=timeout), timeout)
        rows = []
        for tp in committed:
            start, end = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
            rows.append(PartitionLag(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else None, start, end))
        return rows
    except KafkaException as exc:
        raise KafkaUnavailable(f"reading offsets of group {group}: {exc}") from None
    finally:
        probe.close()


def topic_end_offsets(topology: Topology, topic: str, timeout: float = 10) -> dict[int, int]:
    probe = consumer(topology, group="pipeline-offsets-probe")
    try:
        meta = probe.list_topics(topic, timeout=timeout)
        return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in sorted(meta.topics[topic].partitions)}
    finally:
        probe.close()


@dataclass(frozen=True)
class GroupState:
    state: str  # EMPTY, STABLE, PREPARING_REBALANCE, DEAD (never used or gone), ...
    members: int

    @property
    def active(self) -> bool:
        return self.members > 0


def _retrying(call: Callable[[], T], timeout: float) -> T:
    """`call()`, asked again while the group coordinator moves or loads (a fresh broker answers
    NOT_COORDINATOR for a moment); other errors, and this one past `timeout`, are raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in _COORDINATOR_MOVING) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def group_state(topology: Topology, group: str, timeout: float = 10) -> GroupState:
    client = admin(topology)  # keep a reference: a collected client never resolves its futures
    try:
        desc = _retrying(lambda: client.describe_consumer_groups([group], request_timeout=timeout)[group].result(),
                         timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(f"describing group {group}: {exc}") from None
    return GroupState(desc.state.name, len(desc.members))


def offsets_at(topology: Topology, topic: str, partitions: list[int], when: datetime) -> dict[int, int]:
    """The first offset at or after `when` per partition (the broker's offsets-for-times); -1 where none."""
    probe = consumer(topology, group="pipeline-offsets-probe")
    ms = int(when.timestamp() * 1000)
    try:
        found = probe.offsets_for_times([TopicPartition(topic, p, ms) for p in partitions], timeout=15)
    except KafkaException as exc:
        raise KafkaUnavailable(f"offsets for times on {topic}: {exc}") from None
    finally:
        probe.close()
    return {tp.partition: tp.offset for tp in found}
