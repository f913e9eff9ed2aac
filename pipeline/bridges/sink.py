"""Sinks: a Kafka topic's records published to RabbitMQ, Redis or NATS by a Stage with no output, so the stage
runtime commits offsets only after `process` returned, that is after the other broker confirmed the batch."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from typing import Any

import pipeline
from pipeline.avro.codecs import codec_for
from pipeline.config import BridgeSink, StageSpec, Topology, bridge_stage
from pipeline.runtime.stage import Incoming, Result, Stage, TransientError

PUBLISH_TIMEOUT_S = 60.0


class SinkOptions(pipeline.Options):
    sink: str  # the name under bridges.sinks


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def make_publisher(sink: BridgeSink) -> Any:
    url = sink.connect_url()
    if sink.kind == "redis":
        from pipeline.bridges.redis import RedisPublisher

        return RedisPublisher(url, sink.stream, sink.maxlen)
    if sink.kind == "rabbitmq":
        from pipeline.bridges.rabbitmq import RabbitPublisher

        return RabbitPublisher(url, sink.exchange or "", sink.routing_key)
    from pipeline.bridges.nats import NatsPublisher

    return NatsPublisher(url, sink.subject, sink.jetstream)


class SinkStage(Stage):
    """Publishes each batch and returns no records: a failed publish is a TransientError, retried, never skipped."""

    Options = SinkOptions

    def setup(self) -> None:
        self.sink = self.topology.bridge_sink(self.options.sink)
        self.codec = codec_for(self.topology, self.spec.input) if self.sink.format == "avro" else None
        # The async clients live on one event loop in their own thread; process() (the batch thread) waits on it.
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name=f"sink-{self.name}", daemon=True).start()
        self.publisher = make_publisher(self.sink)

    def _body(self, record: Incoming) -> bytes:
        if self.codec is not None:
            return self.codec.encode(record.value)
        return json.dumps(record.value, default=_json_default, ensure_ascii=False).encode()

    def process(self, batch: list[Incoming]) -> list[Result]:
        # The id names the record (topic/partition/offset): NATS JetStream de-duplicates a republished one by it.
        bodies = [(f"{r.topic}/{r.partition}/{r.offset}", self._body(r)) for r in batch]
        future = asyncio.run_coroutine_threadsafe(self.publisher.publish(bodies), self.loop)
        try:
            future.result(PUBLISH_TIMEOUT_S)
        except Exception as exc:
            future.cancel()
            raise TransientError(f"{self.sink.kind} sink did not confirm {len(bodies)} record(s): "
                                 f"{type(exc).__name__}: {exc}") from exc
        return [[] for _ in batch]

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.publisher.close(), self.loop).result(10)
        except Exception:  # closing a connection that is already gone
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)


def sink_stage(topology: Topology, name: str) -> str:
    """Add the sink as a stage of `topology` (its own group, input, dead-letter topic); the stage's name."""
    sink = topology.bridge_sink(name)
    stage = bridge_stage(name)
    topology.stages[stage] = StageSpec(
        impl="pipeline.bridges.sink:SinkStage", input=sink.topic, output=None, dead_letter=sink.dead_letter,
        group=sink.group, batch=sink.batch, web_port=sink.web_port, options={"sink": name},
    )
    return stage


def run_sink(topology: Topology, name: str, loglevel: str = "info") -> None:
    from pipeline.runtime.app import run_worker

    run_worker(topology, sink_stage(topology, name), 0, loglevel)
