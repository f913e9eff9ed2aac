"""Read a topic like the console consumer: decoded Avro as JSON, never committing offsets."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

from pipeline.avro.schemas import AvroError
from pipeline.kafka.clients import consumer
from pipeline.config import Topology
from pipeline.errors import KafkaUnavailable
from pipeline.avro.codecs import codec_for


@dataclass
class Consumed:
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any] | None  # None when the bytes did not decode (see error) or the topic is raw
    raw: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int
    error: str | None = None

    def as_json(self, with_meta: bool) -> str:
        body: Any = self.value if self.value is not None else _b64(self.raw)
        if not with_meta:
            return json.dumps(body, default=_json_default, ensure_ascii=False)
        return json.dumps({
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "headers": {k: (v or b"").decode(errors="replace") for k, v in self.headers},
            "value": body,
            **({"error": self.error} if self.error else {}),
        }, default=_json_default, ensure_ascii=False)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):  # vectors and other binary fields
        return _b64(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def consume(
    topology: Topology,
    topic: str,
    from_beginning: bool = False,
    max_messages: int | None = None,
    exit_at_end: bool = False,
    idle_timeout: float | None = None,
    uncommitted: bool = False,
) -> Iterator[Consumed]:
    """Yield records of every partition of `topic` until `max_messages`, the end (if asked) or idle timeout;
    only committed ones unless `uncommitted` (the raw log, with records of open and aborted transactions)."""
    spec = topology.topic(topic)
    codec = codec_for(topology, topic) if spec.value_schema else None
    isolation = "read_uncommitted" if uncommitted else "read_committed"
    client = consumer(topology, group=f"pipeline-consume-{uuid.uuid4().hex[:8]}",
                      **{"enable.partition.eof": True, "isolation.level": isolation})
    try:
        try:
            meta = client.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot reach Kafka: {exc}; is the broker up (`pipeline dev up`)?") from None
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise KafkaUnavailable(f"topic '{topic}' does not exist on the cluster: run `pipeline topics apply`")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        partitions = sorted(meta.topics[topic].partitions)
        client.assign([TopicPartition(topic, p, start) for p in partitions])
        at_end: set[int] = set()
        count, last_seen = 0, time.monotonic()
        while max_messages is None or count < max_messages:
            msg = client.poll(0.5)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last_seen > idle_timeout:
                    return
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    if exit_at_end and at_end >= set(partitions):
                        return
                    continue
                raise KafkaUnavailable(f"reading {topic}: {msg.error().str()}")
            at_end.discard(msg.partition())
            last_seen = time.monotonic()
            count += 1
            yield _decode(msg, codec)
    finally:
        client.close()


def _decode(msg: Any, codec: Any) -> Consumed:
    raw = msg.value()
    value, error = None, None
    if codec is not None:
        try:
            value = codec.decode(raw)
        except AvroError as exc:
            error = f"{exc.reason}: {exc}"
    return Consumed(
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=value,
        raw=raw if value is None else None,
        headers=list(msg.headers() or []),
        timestamp_ms=msg.timestamp()[1],
        error=error,
    )
