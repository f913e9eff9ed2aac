"""`python -m bench.reference CONFIG STAGE WARM COUNT MARKS`: a bare librdkafka loop, a light stage's skeleton.

In one thread, with no Faust, it takes from the stage's input topic with the stage's take size and wait (one
consume() a take), decodes every value with the topic's codec, encodes each record again with it and produces
it (same key) to the stage's output topic, or its dead-letter topic where it has none; it flushes each take,
raising if a record is not acknowledged, then commits the take's offsets synchronously. It writes MARKS.warm
(JSON: the time) once it has committed WARM events, and MARKS.done (JSON: the time of the commit that reached
WARM + COUNT events, and the settings) once it has; the caller sends the COUNT events (or filled the topic
before) and stops it (SIGTERM: it finishes its take, commits and closes). This is what a light stage's skeleton
costs in Python with librdkafka."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import typer
from confluent_kafka import Message, TopicPartition

from pipeline.avro.codecs import codec_for
from pipeline.config import load_topology
from pipeline.errors import PipelineError
from pipeline.kafka.clients import consumer
from pipeline.kafka.sender import Sender

OVERRIDES: dict[str, object] = {"partition.assignment.strategy": "cooperative-sticky", "enable.auto.commit": False}


def main(config: Path, stage: str, warm: int, count: int, marks: Path) -> None:
    topology = load_topology(config)
    spec = topology.stages[stage]
    group, take, within = f"{spec.group}.reference", spec.batch.max_records, spec.batch.max_wait_ms / 1000
    settings = {"group.id": group, **OVERRIDES, "num_messages": take, "timeout": within}
    codec, target = codec_for(topology, spec.input), spec.output or spec.dead_letter
    source, sink = consumer(topology, group, **OVERRIDES), Sender(topology)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    warmed, done = marks.with_suffix(".warm"), marks.with_suffix(".done")
    seen = 0
    source.subscribe([spec.input])
    try:
        while not stopping:
            batch = [m for m in source.consume(num_messages=take, timeout=within) if not m.error()]
            if not batch:
                continue
            records = [codec.decode(m.value()) for m in batch]
            for msg, record in zip(batch, records):
                sink.send(target, codec.encode(record, validate=False), msg.key())
            barrier = sink.flush(30)
            if not barrier.ok:
                raise PipelineError(f"records to {target}: {barrier.unacked} not acknowledged within 30 s, "
                                    f"{len(barrier.failures)} failed")
            source.commit(offsets=_next_offsets(batch), asynchronous=False)
            now, seen = time.time(), seen + len(batch)
            if seen >= warm and not warmed.exists():
                _write(warmed, {"time": now, "events": seen})
            if seen >= warm + count and not done.exists():
                _write(done, {"time": now, "events": seen, "settings": settings})
    finally:
        source.close()


def _write(path: Path, data: dict) -> None:
    """Whole or not at all: the caller polls for the file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    """Each partition's offset to commit after `batch`: its last message's offset + 1."""
    ends = {(m.topic(), m.partition()): m.offset() + 1 for m in batch}
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in ends.items()]


if __name__ == "__main__":
    typer.run(main)
