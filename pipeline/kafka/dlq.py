"""Dead letters: the original key and value bytes untouched, the reason in headers (Kafka Connect style);
reading them back by reason, and redriving them byte-exactly to the stage's input."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaException

from pipeline.config import Topology
from pipeline.kafka.consume import consume
from pipeline.errors import KafkaUnavailable
from pipeline.kafka.sender import Sender

REDRIVEN_FROM = "pipeline.redriven-from"

PREFIX = "pipeline.error."


def error_headers(
    stage: str, reason: str, error_class: str, message: str, topic: str, partition: int, offset: int,
) -> list[tuple[str, bytes]]:
    """Headers that say why and where a record failed; `pipeline dlq` groups by `reason`."""
    fields = {
        "stage": stage,
        "reason": reason,
        "class": error_class,
        "message": message[:2000],
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "time_ms": str(int(time.time() * 1000)),
    }
    return [(PREFIX + k, v.encode()) for k, v in fields.items()]


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The error fields of a dead letter's headers, without the prefix."""
    return {
        k.removeprefix(PREFIX): (v or b"").decode(errors="replace")
        for k, v in (headers or []) if k.startswith(PREFIX)
    }


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: dict[str, str]  # stage, reason, class, message, topic, partition, offset, time_ms
    topic: str = ""  # the dead-letter topic it was read from

    @property
    def reason(self) -> str:
        return self.error.get("reason", "unknown")

    @property
    def origin(self) -> str:
        """Where this letter lies: dead-letter topic/partition/offset."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def topic_dead_letters(topology: Topology, topic: str, written_by: str | None = None) -> list[DeadLetter]:
    """Every record in a dead-letter topic, oldest first per partition; with `written_by`, only those whose
    stage header names it (a topic that several bridges or stages share)."""
    letters = [DeadLetter(r.partition, r.offset, r.key, r.raw, read_headers(r.headers), topic)
               for r in consume(topology, topic, from_beginning=True, exit_at_end=True)]
    return [d for d in letters if written_by is None or d.error.get("stage") == written_by]


def dead_letters(topology: Topology, stage: str) -> list[DeadLetter]:
    """Every record in the stage's dead-letter topic, oldest first per partition."""
    return topic_dead_letters(topology, topology.stages[stage].dead_letter)


def redrive(topology: Topology, stage: str, letters: list[DeadLetter],
            on_progress: Callable[[int], None] | None = None, **producer_overrides: object) -> int:
    """Put the letters' original key and value bytes back on the stage's input; returns how many were acked."""
    return send_back(topology, topology.stages[stage].input, [(d.origin, d.key, d.value) for d in letters],
                     on_progress, **producer_overrides)


def send_back(topology: Topology, topic: str, records: list[tuple[str, bytes | None, bytes | None]],
              on_progress: Callable[[int], None] | None = None, **producer_overrides: object) -> int:
    """Produce (origin, key, value) records to `topic`, each with a REDRIVEN_FROM header naming its origin; how
    many were acked, or KafkaUnavailable when not all of them were."""
    sender = Sender(topology, **producer_overrides)
    refused: list[str] = []
    for n, (origin, key, value) in enumerate(records, start=1):
        try:
            sender.send(topic, value, key, headers=[(REDRIVEN_FROM, origin.encode())], tag=origin)
        except KafkaException as exc:  # refused by the producer itself, e.g. over message.max.bytes
            refused.append(f"{origin}: {exc.args[0].str()}")
        if on_progress:
            on_progress(n)
    barrier = sender.flush(60)
    failed = refused + [f"{f.tag}: {f.error.str()}" for f in barrier.failures]
    if failed or barrier.unacked:
        raise KafkaUnavailable(f"redrive: {sender.acked} of {len(records)} acknowledged, {barrier.unacked} "
                               f"unacknowledged after 60 s, {len(failed)} failed ({'; '.join(failed[:3])}); "
                               "redriving again may duplicate the acknowledged ones (use --where to narrow)")
    return sender.acked
