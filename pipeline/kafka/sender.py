"""One way to produce: back-pressure on a full local queue, a delivery report per record, flush as the barrier."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message

from pipeline.config import Topology
from pipeline.kafka.clients import producer


@dataclass(frozen=True, slots=True)
class Failure:
    """A record the broker did not acknowledge, with the tag it was sent with."""

    tag: Any
    topic: str
    error: KafkaError

    def __str__(self) -> str:
        return f"{self.topic}: {self.error.str()}"


@dataclass
class Barrier:
    """What a flush found: records still unacknowledged when it gave up, and records that failed."""

    unacked: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unacked and not self.failures


POLL_EVERY = 1000  # sends between two polls for delivery reports


class Sender:
    """A confluent-kafka producer (acks=all, idempotent) that waits instead of failing when its local queue is
    full, counts what was acknowledged, and reports at `flush()` every record that was not."""

    def __init__(self, topology: Topology, **overrides: object) -> None:
        self.producer = producer(topology, **overrides)
        self.acked = 0
        self.per_partition: Counter[int] = Counter()
        self._failures: list[Failure] = []
        self._sent = 0

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, tag: Any = None) -> None:
        """Hand one record to the producer; a full local queue is drained first, never dropped. Raises
        KafkaException when the producer refuses the record itself (e.g. larger than message.max.bytes)."""
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._failures.append(Failure(tag, msg.topic(), err))
            else:
                self.acked += 1
                self.per_partition[msg.partition()] += 1

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry the same record
                self.producer.poll(0.1)
        self._sent += 1
        if self._sent % POLL_EVERY == 0:  # serve the delivery reports so far (flush serves the rest)
            self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> Barrier:
        """Wait until every record sent so far is acknowledged or failed (at most `timeout` seconds)."""
        unacked = self.producer.flush(timeout)
        barrier = Barrier(unacked, self._failures)
        self._failures = []
        return barrier

    def discard(self) -> None:
        """Forget the failures reported so far (the records of an aborted transaction, purged by the abort)."""
        self.producer.poll(0)
        self._failures = []
