"""Dead-letter topics: read them with their reasons, and redrive records byte-exactly to the stage's input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.clients import producer
from pipeline.config import Topology
from pipeline.consume import consume
from pipeline.deadletter import read_headers
from pipeline.errors import KafkaUnavailable

REDRIVEN_FROM = "pipeline.redriven-from"


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: dict[str, str]  # stage, reason, class, message, topic, partition, offset, time_ms

    @property
    def reason(self) -> str:
        return self.error.get("reason", "unknown")


def dead_letters(topology: Topology, stage: str) -> list[DeadLetter]:
    """Every record in the stage's dead-letter topic, oldest first per partition."""
    topic = topology.stages[stage].dead_letter
    return [
        DeadLetter(r.partition, r.offset, r.key, r.raw, read_headers(r.headers))
        for r in consume(topology, topic, from_beginning=True, exit_at_end=True)
    ]


def redrive(topology: Topology, stage: str, letters: list[DeadLetter],
            on_progress: Callable[[int], None] | None = None) -> int:
    """Put the letters' original key and value bytes back on the stage's input; returns how many were acked."""
    spec = topology.stages[stage]
    kafka = producer(topology)
    failures: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            failures.append(err.str())

    for n, letter in enumerate(letters, start=1):
        origin = f"{spec.dead_letter}/{letter.partition}/{letter.offset}".encode()
        kafka.produce(spec.input, key=letter.key, value=letter.value, headers=[(REDRIVEN_FROM, origin)],
                      on_delivery=delivered)
        kafka.poll(0)
        if on_progress:
            on_progress(n)
    left = kafka.flush(60)
    if left or failures:
        raise KafkaUnavailable(f"redrive: {left} unacknowledged, {len(failures)} failed ({'; '.join(failures[:3])})")
    return len(letters)
