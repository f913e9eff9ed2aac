"""The generic source loop: read a batch, validate and encode it, produce it, and ack at the source only after
Kafka acknowledged every record; what cannot be decoded or validated goes to the bridge's dead-letter topic."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pipeline.avro.codecs import codec_for
from pipeline.bridges.metrics import BridgeMetrics
from pipeline.avro.schemas import AvroError
from pipeline.config import BridgeSource, Topology, bridge_stage
from pipeline.errors import PipelineError
from pipeline.kafka.dlq import PREFIX, error_headers
from pipeline.kafka.keys import record_key
from pipeline.kafka.limits import Limit, record_size
from pipeline.kafka.sender import Sender
from pipeline.runtime.shell import Shell

log = logging.getLogger("pipeline.bridge")

FLUSH_SLICE_S = 5.0  # a flush waits this long at a time, then tells the source the batch is still in progress
STUCK_AFTER_S = 300.0  # a batch Kafka has not taken by then: exit without acking (the source redelivers it)
SEND_ATTEMPTS = 5
BACKLOG_EVERY_S = 5.0


@dataclass
class Message:
    """One message from the source: its body, its id there (for headers and logs), and what ack needs."""

    body: bytes
    id: str
    handle: Any = None


class Redelivered(Exception):
    """Source.ack cannot ack these messages because the source took them back (RabbitMQ: their channel closed):
    they come again, so retrying the ack is pointless."""


@dataclass(frozen=True)
class Refused:
    """Why a message cannot go to the target topic: a short reason code and a message."""

    reason: str
    message: str
    error_class: str = "BridgeError"


class Source(ABC):
    """What a source implements; the loop owns conversion, producing and when to ack."""

    def __init__(self, name: str, spec: BridgeSource) -> None:
        self.name = name
        self.spec = spec

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def read(self) -> list[Message]:
        """Up to spec.batch messages, waiting at most spec.block_ms for the first."""

    @abstractmethod
    async def ack(self, messages: list[Message]) -> None:
        """Acknowledge messages whose records Kafka holds (or that went to the dead-letter topic)."""

    async def in_progress(self, messages: list[Message]) -> None:
        """Tell the source a batch is still being delivered (NATS: progress acks); nothing by default."""

    async def give_up(self, messages: list[Message]) -> bool:
        """Hand a batch Kafka refused for good to the source's own dead-letter route (RabbitMQ: nack to the
        queue's dead-letter exchange); False where there is none, and the bridge exits unacked instead."""
        return False

    async def backlog(self) -> int | None:
        """Messages waiting at the source (not yet read, or read and not acked)."""
        return None

    async def close(self) -> None: ...

    @property
    def where(self) -> str:
        return f"{self.spec.kind}:{self.spec.stream or self.spec.queue}"


SOURCES = {"redis": "pipeline.bridges.redis:RedisSource", "rabbitmq": "pipeline.bridges.rabbitmq:RabbitSource",
           "nats": "pipeline.bridges.nats:NatsSource"}


def make_source(name: str, spec: BridgeSource) -> Source:
    module, cls = SOURCES[spec.kind].split(":")
    return getattr(importlib.import_module(module), cls)(name, spec)


class Converter:
    """A message body (JSON object or Avro) -> the target topic's Avro value and key, or why not."""

    def __init__(self, topology: Topology, spec: BridgeSource, from_broker: bool = True) -> None:
        self.topic = spec.topic or topology.ingest_topic()
        assert self.topic is not None  # checked when topics.yaml was loaded
        self.codec = codec_for(topology, self.topic)
        self.key_field = topology.topic(self.topic).key_field
        self.format = spec.format
        self.limit = Limit.read(topology, self.topic, from_broker)
        self.max_bytes = min(spec.max_bytes, self.limit.bytes)

    def convert(self, body: bytes) -> tuple[bytes, bytes | None] | Refused:
        if len(body) > self.max_bytes:
            return Refused("too-large", f"body of {len(body):,} bytes is over the bridge's limit of "
                                        f"{self.max_bytes:,} bytes")
        if self.format == "json":
            try:
                record = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                return Refused("bad-json", f"not JSON: {exc}", type(exc).__name__)
            if not isinstance(record, dict):
                return Refused("not-an-object", f"a JSON {type(record).__name__}, not an object")
        else:
            try:
                record = self.codec.decode(body)
            except AvroError as exc:
                return Refused(exc.reason, str(exc), type(exc).__name__)
        try:
            value = self.codec.encode(record)
        except AvroError as exc:
            return Refused(exc.reason, str(exc), type(exc).__name__)
        key = record_key(record, self.key_field)
        if record_size(value, key) > self.limit.bytes:
            return Refused("too-large", f"encoded record over the limit of {self.limit}")
        return value, key


class SourceBridge:
    """One `pipeline bridge in NAME` process: the loop around a Source."""

    def __init__(self, topology: Topology, name: str, source: Source | None = None) -> None:
        self.topology = topology
        self.name = name
        self.spec = topology.bridge_source(name)
        self.source = source or make_source(name, self.spec)
        self.converter = Converter(topology, self.spec)
        self.dead_letter = self.spec.dead_letter
        self.dead_letter_limit = Limit.read(topology, self.dead_letter)
        self.sender = Sender(topology)
        self.m = BridgeMetrics(name, self.spec.kind)
        self.ready = False
        self.shell = Shell(f"bridge {name}", self.m.registry, lambda: {"source": self.ready},
                           topology.kafka.bootstrap, self.m.broker_up)
        self.stopping = asyncio.Event()
        self.held: list[list[Message]] = []  # batches read and not yet acked (or given up), oldest first
        self._failing = 0

    def _send(self, message: Message) -> bool:
        """Hand the message to the producer: to the target topic (True) or the dead-letter topic (False)."""
        converted = self.converter.convert(message.body)
        if isinstance(converted, Refused):
            self._dead_letter(message, converted)
            return False
        value, key = converted
        self.sender.send(self.converter.topic, value, key, tag=message)
        return True

    def _dead_letter(self, message: Message, refused: Refused) -> None:
        headers = error_headers(bridge_stage(self.name), refused.reason, refused.error_class, refused.message,
                                self.source.where, 0, -1)
        headers.append((PREFIX + "source_id", message.id.encode()))
        body = message.body
        room = self.dead_letter_limit.bytes - record_size(b"", None, headers) - 64
        if len(body) > room:  # not even the dead-letter topic takes it whole: keep its start, and say so
            headers.append((PREFIX + "truncated_from", str(len(body)).encode()))
            body = body[:room]
        self.sender.send(self.dead_letter, body, None, headers, tag=message)
        self.m.dead_letters.inc()
        log.warning("%s: message %s dead-lettered (%s): %s", self.name, message.id, refused.reason, refused.message)

    async def deliver(self, batch: list[Message]) -> None:
        """Every message of the batch in Kafka (target or dead-letter topic), or PipelineError; never partly."""
        produced = sum(self._send(message) for message in batch)
        started = time.monotonic()
        for attempt in range(1, SEND_ATTEMPTS + 1):
            failures = []
            while True:
                barrier = await asyncio.to_thread(self.sender.flush, FLUSH_SLICE_S)
                failures += barrier.failures
                if not barrier.unacked:
                    break
                self.m.stuck.set(1)
                if time.monotonic() - started > STUCK_AFTER_S:
                    raise PipelineError(f"Kafka has not acknowledged {barrier.unacked} record(s) in "
                                        f"{STUCK_AFTER_S:.0f}s; nothing of this batch was acked at the source")
                await self._in_progress(batch)
            self.m.stuck.set(0)
            if not failures:
                self.m.messages_out.inc(produced)
                return
            self.m.retries.inc()
            log.warning("%s: %d record(s) not acknowledged (%s), sending them again (attempt %d)", self.name,
                        len(failures), failures[0], attempt)
            await self._in_progress(batch)
            for failure in failures:
                self._send(failure.tag)
        raise PipelineError(f"Kafka refused records {SEND_ATTEMPTS} times ({failures[0]}); nothing of this batch "
                            "was acked at the source, which will deliver it again")

    async def _watch(self) -> None:
        """Every BACKLOG_EVERY_S: the source's backlog for /metrics, and a log line when messages moved (so that
        a bridge started by hand shows its work)."""
        reported = (0, 0)
        while True:
            backlog = None
            try:
                backlog = await self.source.backlog()
                if backlog is not None:
                    self.m.backlog.set(backlog)
            except Exception as exc:  # the source is away: the read loop says so
                log.debug("%s: backlog unknown (%s)", self.name, exc)
            moved = (self.m.total("messages_out"), self.m.total("dead_letters"))
            if moved != reported:
                log.info("%s: %d message(s) to %s, %d to %s; backlog at the source: %s", self.name,
                         moved[0] - reported[0], self.converter.topic, moved[1] - reported[1], self.dead_letter,
                         "unknown" if backlog is None else backlog)
                reported = moved
            await asyncio.sleep(BACKLOG_EVERY_S)

    async def run(self) -> None:
        runner = None
        if self.spec.web_port:
            try:
                runner = await self.shell.serve(self.spec.web_port)
            except OSError as exc:
                raise PipelineError(f"bridge {self.name}: cannot serve on port {self.spec.web_port} "
                                    f"({exc.strerror}): is another one running?") from None
        try:
            await self._run()
        finally:
            if runner is not None:
                await runner.cleanup()
            self.shell.close()

    async def _run(self) -> None:
        try:
            await self.source.open()
        except Exception as exc:  # the server is not there (or refuses the stream, queue or consumer as declared)
            with contextlib.suppress(Exception):  # what did open, so that no client complains at exit
                await self.source.close()
            raise PipelineError(f"bridge {self.name}: cannot open {self.source.where} ({type(exc).__name__}: {exc}); "
                                f"without a server, `pipeline dev up --with {self.spec.kind}` starts one locally"
                                ) from None
        watcher = asyncio.create_task(self._watch())
        self.shell.install_signals(self.stopping.set)
        self.shell.start()
        log.info("bridge %s: %s -> %s (dead letters: %s)", self.name, self.source.where, self.converter.topic,
                 self.dead_letter)
        # The next batch is read while this one is in delivery (Kafka's round trip hides the source's), but
        # produced only after this one is acked: a batch's flush never waits on the next batch's records.
        ahead: asyncio.Task | None = None
        try:
            while not self.stopping.is_set():
                batch = await (ahead or self._read())
                ahead = asyncio.create_task(self._read()) if batch and not self.stopping.is_set() else None
                if batch:
                    await self._handle(batch)
            if ahead is not None:  # stopping: the batch read ahead is in hand too, finish it
                batch = await ahead
                ahead = None
                if batch:
                    await self._handle(batch)
        finally:
            if ahead is not None:  # unacked: the source delivers it again
                ahead.cancel()
            watcher.cancel()
            await self.source.close()

    async def _read(self) -> list[Message]:
        """A batch from the source; none when reading failed (the source server is away: its client reconnects)."""
        try:
            batch = await self.source.read()
        except Exception as exc:
            self._failing += 1
            self.ready = False
            self.m.retries.inc()
            self.m.stuck.set(1)
            log.warning("%s: reading from %s failed (%s: %s); retrying", self.name, self.source.where,
                        type(exc).__name__, exc)
            await asyncio.sleep(min(0.5 * self._failing, 5))
            return []
        if self._failing or not self.ready:
            self._failing, self.ready = 0, True
            self.m.stuck.set(0)
        if batch:
            self.held.append(batch)
        return batch

    async def _handle(self, batch: list[Message]) -> None:
        """Deliver the batch and ack it at the source, or hand it to the source's dead-letter route."""
        self.m.messages_in.inc(len(batch))
        try:
            await self.deliver(batch)
        except PipelineError as exc:
            if not await self.source.give_up(batch):
                raise
            self.m.given_up.inc(len(batch))
            log.error("%s: %s; %d message(s) handed to the source's dead-letter route", self.name, exc, len(batch))
        else:
            await self._ack(batch)
            self.m.batches.inc()
        self.held = [b for b in self.held if b is not batch]

    async def _in_progress(self, batch: list[Message]) -> None:
        """A flush takes long: tell the source about the batch, and about the one read ahead too."""
        await self.source.in_progress(batch + [m for other in self.held if other is not batch for m in other])

    async def _ack(self, batch: list[Message]) -> None:
        # Kafka holds the batch: an ack lost now only means the source delivers it again (a duplicate).
        for attempt in range(1, 11):
            try:
                await self.source.ack(batch)
                self.m.acked.inc(len(batch))
                self.m.stuck.set(0)
                return
            except Redelivered as exc:
                log.warning("%s: %d message(s) not acked at %s (%s); the source delivers them again", self.name,
                            len(batch), self.source.where, exc)
                return
            except Exception as exc:
                self.m.retries.inc()
                self.m.stuck.set(1)
                log.warning("%s: ack at %s failed (%s); retrying", self.name, self.source.where, exc)
                await asyncio.sleep(min(0.5 * attempt, 5))
        log.error("%s: could not ack %d message(s); the source will deliver them again", self.name, len(batch))


def run_source(topology: Topology, name: str, loglevel: str = "info") -> None:
    """Run the bridge until SIGTERM or Ctrl-C: it finishes the batch in hand, acks it, and exits (or, past the
    shutdown deadline, exits unacked: the source delivers that batch again)."""
    bridge = SourceBridge(topology, name)
    bridge.shell.setup_logging(loglevel)
    asyncio.run(bridge.run())
