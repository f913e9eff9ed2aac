"""How large a record may be: the producer's message.max.bytes and the topic's max.message.bytes."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, ResourceType

from pipeline.config import Topology
from pipeline.kafka import clients

log = logging.getLogger("pipeline.kafka")

CLIENT_DEFAULT = 1_000_000  # librdkafka's message.max.bytes
TOPIC_DEFAULT = 1_048_588  # the broker's message.max.bytes, a topic's max.message.bytes unless set
# Bytes a record costs beyond its key, value and headers: the record batch header (61) and the record's own
# framing (at most 36, varints), rounded up; each header adds two length varints.
RECORD_OVERHEAD = 128
HEADER_OVERHEAD = 10
# Error codes of a record that is too large, whether librdkafka refuses it at produce() or the broker at delivery.
SIZE_ERRORS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}


def is_size_error(error: object) -> bool:
    """Whether a KafkaError (e.g. a KafkaException's args[0] or a delivery report's) says a record is too large."""
    return isinstance(error, KafkaError) and error.code() in SIZE_ERRORS


def record_size(value: bytes | None, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None) -> int:
    """A record's size on the wire as the size limits count it, rounded up."""
    size = len(value or b"") + len(key or b"") + RECORD_OVERHEAD
    return size + sum(len(k.encode()) + len(v or b"") + HEADER_OVERHEAD for k, v in headers or [])


def client_limit(topology: Topology) -> int:
    """The producer's message.max.bytes, as topics.yaml's kafka.client sets it or librdkafka's default."""
    return int(topology.kafka.client.get("message.max.bytes", CLIENT_DEFAULT))


def topic_limit(topology: Topology, topic: str, timeout: float = 10.0, from_broker: bool = True) -> tuple[int, str]:
    """The topic's max.message.bytes and where it was read: the broker, else topics.yaml, else Kafka's default."""
    if from_broker:
        try:
            resource = ConfigResource(ResourceType.TOPIC, topic)
            admin = clients.admin(topology)  # held until the result is in: a destroyed client fails its futures
            entry = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout + 5) \
                .get("max.message.bytes")
            if entry is not None and entry.value is not None:
                return int(entry.value), "the broker"
        except (KafkaException, TimeoutError) as exc:  # no such topic yet, no DescribeConfigs ACL, ...
            log.info("cannot read max.message.bytes of %s from the broker (%s); using topics.yaml's or the default",
                     topic, exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else exc)
    configured = topology.topic(topic).config.get("max.message.bytes")
    if configured is not None:
        return int(configured), "topics.yaml"
    return TOPIC_DEFAULT, "Kafka's default"


class Limit:
    """The largest record the producer can send to one topic: the smaller of the client's and the topic's."""

    def __init__(self, topic: str, client: int, topic_max: int, source: str = "the broker") -> None:
        self.topic, self.client, self.topic_max, self.source = topic, client, topic_max, source
        self.bytes = min(client, topic_max)

    @classmethod
    def read(cls, topology: Topology, topic: str, from_broker: bool = True) -> Limit:
        return cls(topic, client_limit(topology), *topic_limit(topology, topic, from_broker=from_broker))

    def __str__(self) -> str:
        return (f"{self.bytes:,} bytes for {self.topic} (producer message.max.bytes {self.client:,}, "
                f"topic max.message.bytes {self.topic_max:,} from {self.source})")
