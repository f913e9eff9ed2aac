"""One batch from consumed bytes to acknowledged outputs: decode, process (bisecting poison), encode, produce, flush."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.avro.codecs import codec_for
from pipeline.avro.schemas import AvroError
from pipeline.config import Topology
from pipeline.kafka.dlq import error_headers
from pipeline.kafka.sender import Sender
from pipeline.runtime import metrics
from pipeline.runtime.stage import Incoming, Reject, Result, Stage, TransientError

log = logging.getLogger("pipeline.runtime")
MAX_BACKOFF = 30.0


class Stopping(Exception):
    """The worker is shutting down while a batch waits to be retried: leave it unacked."""


@dataclass(frozen=True, slots=True)
class Raw:
    """A consumed message as bytes, as the loop hands it to the batch thread."""

    key: bytes | None
    value: bytes | None  # None: a tombstone
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Dead:
    raw: Raw
    reason: str
    error_class: str
    message: str


class BatchHandler:
    """Everything between consuming a batch and acking it; runs in the stage's single worker thread."""

    def __init__(self, stage: Stage, topology: Topology, sender: Sender | None = None) -> None:
        spec = stage.spec
        self.stage = stage
        self.in_codec = codec_for(topology, spec.input)
        self.out_codec = codec_for(topology, spec.output) if spec.output else None
        self.out_key_field = topology.topic(spec.output).key_field if spec.output else None
        # Where outputs and dead letters go: Kafka, or a stand-in with the same send/flush (pipeline.testing).
        self.sender = sender if sender is not None else Sender(topology)
        self.stopping = threading.Event()
        self.chunk: int | None = None  # set after an out-of-memory error: process at most this many at once
        self.m = metrics.StageMetrics(stage.name)

    def run_batch(self, raws: list[Raw]) -> None:
        """Handle one batch until it succeeds; transient failures back off and retry, never skip."""
        backoff = 0.5
        while True:
            try:
                self._handle(raws)
                self.m.stuck.set(0)
                return
            except TransientError as exc:
                if self.stopping.is_set():
                    raise Stopping() from exc
                if exc.shrink:
                    self.chunk = max(1, (self.chunk or len(raws)) // 2)
                log.warning("stage %s: transient failure, retrying in %.1fs: %s", self.stage.name, backoff, exc)
                self.m.stuck.set(1)
                self.m.retries.inc()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _handle(self, raws: list[Raw]) -> None:
        started = time.perf_counter()
        dead: list[Dead] = []
        incoming: list[Incoming] = []
        sources: list[Raw] = []
        for raw in raws:
            tombstone = raw.value is None and self.stage.accepts_tombstones
            try:
                value = None if tombstone else self.in_codec.decode(raw.value)
            except AvroError as exc:
                dead.append(Dead(raw, exc.reason, type(exc).__name__, str(exc)))
                continue
            incoming.append(Incoming(value, raw.key, raw.topic, raw.partition, raw.offset, raw.timestamp_ms))
            sources.append(raw)
        model_started = time.perf_counter()
        results = self._process(incoming)
        self.m.process_seconds.observe(time.perf_counter() - model_started)
        sends: list[tuple[bytes | None, bytes]] = []
        for raw, result in zip(sources, results):
            if isinstance(result, Reject):
                dead.append(Dead(raw, result.reason, "Reject", result.message))
                continue
            try:
                sends += [(self._key(record, raw), self.out_codec.encode(record, validate=False))
                          for record in result] if self.out_codec else []
            except AvroError as exc:  # a stage bug: the input is dead-lettered, not lost
                dead.append(Dead(raw, "output-invalid", type(exc).__name__, str(exc)))
        self._send(sends, dead)
        self.m.events_in.inc(len(raws))
        self.m.events_out.inc(len(sends))
        self.m.batch_size.observe(len(raws))
        self.m.batch_fill.observe(len(raws) / self.stage.spec.batch.max_records)
        self.m.batch_seconds.observe(time.perf_counter() - started)
        for d in dead:
            self.m.dead_lettered(d.reason).inc()
        now_ms = time.time() * 1000
        self.m.last_batch.set(now_ms / 1000)
        for item in incoming:
            self.m.latency.observe(max(0.0, now_ms - ingest_time_ms(item)) / 1000)

    def _key(self, record: dict[str, Any], raw: Raw) -> bytes | None:
        if self.out_key_field and record.get(self.out_key_field) is not None:
            return str(record[self.out_key_field]).encode()
        return raw.key

    def _process(self, items: list[Incoming]) -> list[Result]:
        size = self.chunk or max(len(items), 1)
        results: list[Result] = []
        for i in range(0, len(items), size):
            results += isolate(self.stage.process, items[i:i + size], self.stage.name)
        return results

    def _send(self, sends: list[tuple[bytes | None, bytes]], dead: list[Dead]) -> None:
        """Produce outputs and dead letters, then wait until the broker acknowledged every one of them."""
        spec = self.stage.spec
        for key, value in sends:
            self.sender.send(spec.output, value, key)
        for d in dead:
            headers = error_headers(self.stage.name, d.reason, d.error_class, d.message,
                                    d.raw.topic, d.raw.partition, d.raw.offset)
            self.sender.send(spec.dead_letter, d.raw.value, d.raw.key, headers)
        barrier = self.sender.flush(30)
        if not barrier.ok:
            errors = "; ".join(str(f) for f in barrier.failures[:3])
            raise TransientError(f"{barrier.unacked} record(s) unacknowledged, {len(barrier.failures)} failed: {errors}")

def ingest_time_ms(item: Incoming) -> int:
    """When the record's source entered the pipeline: its lineage.ingest_time_ms where it carries one."""
    lineage = item.value.get("lineage") if item.value is not None else None
    return lineage.get("ingest_time_ms", item.timestamp_ms) if isinstance(lineage, dict) else item.timestamp_ms


def isolate(process: Callable[[list[Incoming]], list[Result]], items: list[Incoming], stage: str) -> list[Result]:
    """Call `process`; when a batch fails permanently, bisect until the bad records stand alone and are
    rejected, so one poison record never takes good ones with it. TransientError passes through."""
    if not items:
        return []
    try:
        results = process(items)
        if len(results) != len(items):
            raise RuntimeError(f"stage returned {len(results)} results for {len(items)} inputs")
        return results
    except TransientError:
        raise
    except Exception as exc:
        if len(items) == 1:
            log.warning("stage %s: record at %s[%d]@%d failed: %r", stage,
                        items[0].topic, items[0].partition, items[0].offset, exc)
            return [Reject("stage-error", f"{type(exc).__name__}: {exc}")]
        mid = len(items) // 2
        return isolate(process, items[:mid], stage) + isolate(process, items[mid:], stage)
