"""A bounded reprocessing run of one stage under its own consumer group; it exits when the range is done."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import TopicPartition

from pipeline.kafka.clients import consumer
from pipeline.config import Topology
from pipeline.errors import PipelineError
from pipeline.kafka.offsets import topic_end_offsets
from pipeline.kafka.reset import offsets_at
from pipeline.runtime.batch import BatchHandler, Raw
from pipeline.runtime.stage import load_stage


@dataclass(frozen=True)
class Range:
    partition: int
    begin: int  # first offset to process
    stop: int  # first offset not to process

    @property
    def size(self) -> int:
        return max(0, self.stop - self.begin)


def plan_ranges(topology: Topology, topic: str, since: datetime, until: datetime | None) -> list[Range]:
    """Offsets from `since` up to `until` (or the log's end now) per partition, from the broker's time index."""
    ends = topic_end_offsets(topology, topic)
    begins = offsets_at(topology, topic, list(ends), since)
    stops = offsets_at(topology, topic, list(ends), until) if until else ends
    return [
        Range(p, begins[p] if begins[p] >= 0 else ends[p], stops[p] if stops[p] >= 0 else ends[p])
        for p in sorted(ends)
    ]


def run_backfill(
    topology: Topology,
    stage_name: str,
    group: str,
    ranges: list[Range],
    rate: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Process exactly `ranges` through the stage (outputs go to its output topic) and return the count."""
    if group == topology.stages[stage_name].group:
        raise PipelineError(f"a backfill must not use the live group {group}: pick another --group")
    stage = load_stage(topology, stage_name)
    stage.setup()
    handler = BatchHandler(stage, topology)
    spec = stage.spec
    todo = {r.partition: r for r in ranges if r.size}
    total, done = sum(r.size for r in todo.values()), 0
    kafka = consumer(topology, group=group)
    kafka.assign([TopicPartition(spec.input, r.partition, r.begin) for r in todo.values()])
    started = time.monotonic()
    try:
        while todo:
            messages = kafka.consume(spec.batch.max_records, timeout=max(spec.batch.max_wait_ms / 1000, 0.1))
            raws = []
            for msg in messages:
                if msg.error():
                    raise PipelineError(f"reading {spec.input}: {msg.error().str()}")
                r = todo.get(msg.partition())
                if r is not None and msg.offset() < r.stop:
                    raws.append(Raw(msg.key(), msg.value(), msg.topic(), msg.partition(), msg.offset(),
                                    msg.timestamp()[1]))
            if raws:
                handler.run_batch(raws)
                last = {}
                for raw in raws:
                    last[raw.partition] = raw.offset + 1
                kafka.commit(offsets=[TopicPartition(spec.input, p, o) for p, o in last.items()], asynchronous=False)
                done += len(raws)
            for p in list(todo):
                position = kafka.position([TopicPartition(spec.input, p)])[0].offset
                if position >= todo[p].stop:
                    kafka.pause([TopicPartition(spec.input, p)])
                    del todo[p]
            if on_progress:
                on_progress(done, total)
            if rate and done:
                ahead = done / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        kafka.close()
        stage.close()
    return done
