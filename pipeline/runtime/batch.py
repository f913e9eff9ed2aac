"""One batch from consumed bytes to acknowledged outputs, in steps: decode (and prepare), process (bisecting poison),
deliver (encode, produce, flush)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from pipeline.avro.codecs import codec_for
from pipeline.avro.schemas import AvroError
from pipeline.config import Topology
from pipeline.kafka.dlq import PREFIX, error_headers
from pipeline.kafka.keys import record_key
from pipeline.kafka.limits import RECORD_OVERHEAD, Limit, is_size_error, record_size
from pipeline.kafka.reader import Raw
from pipeline.kafka.sender import Barrier, Sender
from pipeline.runtime import metrics
from pipeline.runtime.stage import Incoming, Reject, Result, Stage, TransientError

log = logging.getLogger("pipeline.runtime")
MAX_BACKOFF = 30.0


class Stopping(Exception):
    """The worker is shutting down while a batch waits to be retried: leave it unacked."""


@dataclass(frozen=True, slots=True)
class Dead:
    """An input bound for the dead-letter topic, and why."""

    raw: Raw
    reason: str
    error_class: str
    message: str
    extra: tuple[tuple[str, str], ...] = ()  # more error headers, e.g. ("size", "1000512")


@dataclass(slots=True, eq=False)  # made for every output record: not frozen, which is ~6x slower to make
class Output:
    """One encoded output record and the input it came from (the tag of its delivery report)."""

    source: Raw
    key: bytes | None
    value: bytes
    index: int  # its place among the input's outputs
    count: int  # how many outputs the input made


@dataclass(eq=False)
class Take:
    """One batch on its way through the loop: fetched and decoded, processed, delivered, then committed."""

    raws: list[Raw]
    incoming: list[Incoming]  # the decodable inputs, in order (prepared by the stage where it prepares)
    sources: list[Raw]  # the Raw of each incoming
    dead: list[Dead]  # inputs that did not decode
    fetched: float = field(default_factory=time.perf_counter)
    results: list[Result] | None = None  # one per incoming, once processed

    @property
    def offsets(self) -> dict[int, int]:
        """Per input partition, the offset to commit once this take is delivered: its last offset + 1."""
        found: dict[int, int] = {}
        for raw in self.raws:
            found[raw.partition] = max(found.get(raw.partition, -1), raw.offset + 1)
        return found

    def drop(self, partitions: frozenset[int]) -> int:
        """Forget the records of these partitions (no longer ours: not processed, not committed); how many."""
        kept = [raw for raw in self.raws if raw.partition not in partitions]
        dropped = len(self.raws) - len(kept)
        if dropped:
            pairs = [(item, raw) for item, raw in zip(self.incoming, self.sources) if raw.partition not in partitions]
            self.raws = kept
            self.incoming = [item for item, _ in pairs]
            self.sources = [raw for _, raw in pairs]
            self.dead = [d for d in self.dead if d.raw.partition not in partitions]
        return dropped


class BatchHandler:
    """Everything between consuming a batch and committing it, in three steps that the loop runs on different
    threads so that batches overlap: `decode` (the fetch thread), `process` (the model thread) and `deliver`
    (the delivery thread). Transient failures of a step back off and retry that step, never skip it."""

    def __init__(self, stage: Stage, topology: Topology, sender: Sender | None = None,
                 transactional: dict[str, object] | None = None) -> None:
        spec = stage.spec
        self.stage = stage
        self.in_codec = codec_for(topology, spec.input)
        self.out_codec = codec_for(topology, spec.output) if spec.output else None
        self.out_key_field = topology.topic(spec.output).key_field if spec.output else None
        # Limits come from the broker, except for a stand-in sender (pipeline.testing): then from topics.yaml.
        from_broker = sender is None
        self.out_limit = Limit.read(topology, spec.output, from_broker) if spec.output else None
        self.dlq_limit = Limit.read(topology, spec.dead_letter, from_broker)
        if sender is None:
            # librdkafka packs records into one batch per partition, and the broker checks each batch against
            # the topic's max.message.bytes: batches must fit the smallest limit (a record is never split).
            fits = min(limit.bytes for limit in (self.out_limit, self.dlq_limit) if limit) - RECORD_OVERHEAD
            batch_size = min(int(topology.kafka.client.get("batch.size", 1_000_000)), max(fits, 1))
            sender = Sender(topology, **{"batch.size": batch_size, **(transactional or {})})
        # Exactly-once: the loop runs each delivery inside its transaction, flushed once before the commit; a
        # late refusal aborts it instead of being dead-lettered in place, and the next try dead-letters that input.
        self.transactional = transactional is not None
        self.refused: dict[tuple[str, int, int], Dead] = {}  # (topic, partition, offset) -> its dead letter
        # Where outputs and dead letters go: Kafka, or a stand-in with the same send/flush (pipeline.testing).
        self.sender = sender
        self.stopping = threading.Event()
        self.chunk: int | None = None  # set after an out-of-memory error: process at most this many at once
        self.m = metrics.StageMetrics(stage.name)
        self._stuck: set[str] = set()  # the steps retrying a transient failure now

    def run_batch(self, raws: list[Raw]) -> None:
        """All three steps on this thread, one after the other (backfill, the test kit)."""
        take = self.decode(raws)
        self.process([take])
        self.deliver(take)

    def decode(self, raws: list[Raw]) -> Take:
        """Decode the values, then let the stage prepare the batch (e.g. tokenize) before the model is free."""
        dead: list[Dead] = []
        incoming: list[Incoming] = []
        sources: list[Raw] = []
        accepts_tombstones = self.stage.accepts_tombstones
        decode = self.in_codec.decode
        for raw in raws:
            try:
                value = None if raw.value is None and accepts_tombstones else decode(raw.value)
            except AvroError as exc:
                dead.append(Dead(raw, exc.reason, type(exc).__name__, str(exc)))
                continue
            incoming.append(Incoming(value, raw.key, raw.topic, raw.partition, raw.offset, raw.timestamp_ms))
            sources.append(raw)
        return Take(raws, self._prepare(incoming), sources, dead)

    def _prepare(self, incoming: list[Incoming]) -> list[Incoming]:
        try:
            prepared = self.stage.prepare(incoming)
        except MemoryError:
            raise  # the process is in trouble, not the record: the worker crashes and restarts
        except Exception as exc:  # noqa: BLE001 - process() meets the record again, and bisects what fails there
            log.debug("stage %s: prepare failed (%r); process() gets the batch unprepared", self.stage.name, exc)
            return incoming
        if len(prepared) != len(incoming):
            raise RuntimeError(f"stage {self.stage.name}: prepare returned {len(prepared)} records for "
                               f"{len(incoming)}")
        return prepared

    def process(self, takes: list[Take]) -> None:
        """The stage's own work on one or more takes in one call (the loop merges takes that waited for the
        model, as a dynamic batcher does): one result per decoded input, set on each take."""
        self._retry("process", self._process, takes)

    def deliver(self, take: Take) -> None:
        """Encode the results, produce them and the dead letters, and wait until the broker acknowledged all."""
        self._retry("deliver", self._deliver, take)

    def deliver_once(self, take: Take) -> None:
        """Encode and produce into the open transaction, without waiting for acknowledgements (`settle` does,
        once per transaction) and without retries: a failure aborts it and the batch is processed again."""
        self._deliver(take)

    def stuck(self, step: str, stuck: bool) -> None:
        """Show (or clear) that `step` is retrying a transient failure (the pipeline_stuck gauge)."""
        if stuck:
            self._stuck.add(step)
            self.m.stuck.set(1)
            self.m.retries.inc()
        else:
            self._stuck.discard(step)
            self.m.stuck.set(1 if self._stuck else 0)

    def _retry(self, step: str, run: Callable[[Any], None], work: Any) -> None:
        backoff = 0.5
        while True:
            try:
                run(work)
                break
            except TransientError as exc:
                if self.stopping.is_set():
                    raise Stopping() from exc
                if exc.shrink:
                    size = sum(len(t.incoming) for t in work) if isinstance(work, list) else len(work.incoming)
                    self.chunk = max(1, (self.chunk or size) // 2)
                log.warning("stage %s: transient failure, retrying in %.1fs: %s", self.stage.name, backoff, exc)
                self.stuck(step, True)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self.stuck(step, False)

    def _process(self, takes: list[Take]) -> None:
        started = time.perf_counter()
        items = [item for take in takes for item in take.incoming]
        size = self.chunk or max(len(items), 1)
        results: list[Result] = []
        for i in range(0, len(items), size):
            results += isolate(self.stage.process, items[i:i + size], self.stage.name)
        for take in takes:
            take.results, results = results[:len(take.incoming)], results[len(take.incoming):]
        self.m.process_seconds.observe(time.perf_counter() - started)

    def _deliver(self, take: Take) -> None:
        dead = list(take.dead)
        outputs: list[Output] = []
        encode = self.out_codec.encode if self.out_codec is not None else None
        for raw, result in zip(take.sources, take.results or []):
            refused = self.refused.pop((raw.topic, raw.partition, raw.offset), None) if self.refused else None
            if refused is not None:  # refused by the broker in an aborted transaction: dead-lettered this time
                dead.append(refused)
                continue
            if isinstance(result, Reject):
                dead.append(Dead(raw, result.reason, "Reject", result.message))
                continue
            if encode is None:
                continue
            try:
                made = [(record_key(record, self.out_key_field, raw.key), encode(record, validate=False))
                        for record in result]
            except AvroError as exc:  # a stage bug: the input is dead-lettered, not lost
                dead.append(Dead(raw, "output-invalid", type(exc).__name__, str(exc)))
                continue
            mine = [Output(raw, key, value, i, len(made)) for i, (key, value) in enumerate(made)]
            too_large = self._too_large(mine)
            if too_large:
                dead.append(too_large)
            else:
                outputs += mine
        dead = self._send(outputs, dead)
        self._count(take, outputs, dead)

    def _count(self, take: Take, outputs: list[Output], dead: list[Dead]) -> None:
        dropped = {d.raw for d in dead}
        self.m.events_in.inc(len(take.raws))
        self.m.events_out.inc(sum(1 for out in outputs if out.source not in dropped) if dropped else len(outputs))
        self.m.batch_size.observe(len(take.raws))
        self.m.batch_fill.observe(len(take.raws) / self.stage.spec.batch.max_records)
        self.m.batch_seconds.observe(time.perf_counter() - take.fetched)
        for d in dead:
            self.m.dead_lettered(d.reason).inc()
        now_ms = time.time() * 1000
        self.m.last_batch.set(now_ms / 1000)
        for item in take.incoming:
            self.m.latency.observe(max(0.0, now_ms - ingest_time_ms(item)) / 1000)

    def _too_large(self, outputs: list[Output]) -> Dead | None:
        """The dead letter of an input whose largest output is over the output topic's limit, if it is."""
        if not outputs or self.out_limit is None:
            return None
        sizes = [record_size(o.value, o.key) for o in outputs]
        largest = max(sizes)
        if largest <= self.out_limit.bytes:
            return None
        return self._oversized(outputs[sizes.index(largest)], "is too large")

    def _oversized(self, out: Output, what: str) -> Dead:
        size = record_size(out.value, out.key)
        message = f"output {out.index + 1} of {out.count} ({size:,} bytes) {what}; the limit is {self.out_limit}"
        return Dead(out.source, "output-too-large", "OutputTooLarge", message,
                    (("size", str(size)), ("limit", str(self.out_limit.bytes))))

    def _send(self, outputs: list[Output], dead: list[Dead]) -> list[Dead]:
        """Produce outputs and dead letters, then wait until the broker acknowledged every one of them. An input
        whose output the producer or the broker refuses as too large is dead-lettered instead (the outputs of
        it sent before the refusal stay). Returns every dead letter sent."""
        spec = self.stage.spec
        refused: dict[Raw, Dead] = {}
        for out in outputs:
            if out.source in refused:
                continue
            try:
                self.sender.send(spec.output, out.value, out.key, tag=out)
            except KafkaException as exc:
                if not is_size_error(exc.args[0]):
                    raise
                refused[out.source] = self._oversized(out, f"was refused by the producer ({exc.args[0].str()})")
        dead = dead + list(refused.values())
        self._dead_letters(dead)
        if self.transactional:  # acknowledged all at once when the transaction commits (`settle`)
            return dead
        barrier = self.sender.flush(30)
        late = self._refused_late(barrier, set(refused))
        _check(barrier, [f for f in barrier.failures
                         if not (isinstance(f.tag, Output) and is_size_error(f.error))])
        if late:
            self._dead_letters(list(late.values()))
            _check(self.sender.flush(30), None)
        return dead + list(late.values())

    def _refused_late(self, barrier: Barrier, known: set[Raw]) -> dict[Raw, Dead]:
        """The dead letters of inputs whose output the broker refused as too large at delivery."""
        late: dict[Raw, Dead] = {}
        for failure in barrier.failures:
            out = failure.tag
            if isinstance(out, Output) and is_size_error(failure.error) and out.source not in known:
                late.setdefault(out.source, self._oversized(out, f"was refused at delivery ({failure.error.str()})"))
        return late

    def settle(self) -> str | None:
        """Exactly-once, before a commit: wait for the open transaction's records; None when the broker
        acknowledged all, else why not (a failed record makes the transaction abortable). Inputs whose output was
        refused as too large are remembered: the batch's next try dead-letters them."""
        barrier = self.sender.flush(30)
        late = self._refused_late(barrier, set())
        self.refused.update({(raw.topic, raw.partition, raw.offset): d for raw, d in late.items()})
        return _unacknowledged(barrier)

    def _dead_letters(self, dead: list[Dead]) -> None:
        spec = self.stage.spec
        for d in dead:
            headers = error_headers(self.stage.name, d.reason, d.error_class, d.message,
                                    d.raw.topic, d.raw.partition, d.raw.offset)
            headers += [(PREFIX + name, value.encode()) for name, value in d.extra]
            try:
                self.sender.send(spec.dead_letter, d.raw.value, d.raw.key, headers, tag=d)
            except KafkaException as exc:
                if not is_size_error(exc.args[0]):
                    raise
                raise TransientError(  # stuck until someone raises the limit: visible, never skipped
                    f"the dead letter of {d.raw.topic}[{d.raw.partition}]@{d.raw.offset} "
                    f"({record_size(d.raw.value, d.raw.key, headers):,} bytes) is over the limit of "
                    f"{self.dlq_limit}: raise that topic's max.message.bytes") from exc


def _check(barrier: Barrier, failures: list | None) -> None:
    """TransientError unless every record was acknowledged (`failures`: the ones that count, default all)."""
    problem = _unacknowledged(barrier, failures)
    if problem is not None:
        raise TransientError(problem)


def _unacknowledged(barrier: Barrier, failures: list | None = None) -> str | None:
    """What was not acknowledged (`failures`: the ones that count, default all), or None when nothing."""
    failures = barrier.failures if failures is None else failures
    if not (barrier.unacked or failures):
        return None
    errors = "; ".join(str(f) for f in failures[:3])
    return f"{barrier.unacked} record(s) unacknowledged, {len(failures)} failed: {errors}"


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
    except (TransientError, MemoryError):
        raise  # MemoryError: the process is in trouble, not the record; the worker crashes and restarts
    except Exception as exc:
        if len(items) == 1:
            log.warning("stage %s: record at %s[%d]@%d failed: %r", stage,
                        items[0].topic, items[0].partition, items[0].offset, exc)
            return [Reject("stage-error", f"{type(exc).__name__}: {exc}")]
        mid = len(items) // 2
        return isolate(process, items[:mid], stage) + isolate(process, items[mid:], stage)
