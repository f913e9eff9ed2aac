"""confluent-kafka clients configured the way every part of the pipeline needs them."""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pipeline.config import Topology
from pipeline.kafka.security import librdkafka_security

# librdkafka's own log lines (connection retries, queue purges at close) go through Python logging, where
# only warnings and errors are shown.
KAFKA_LOG = logging.getLogger("pipeline.librdkafka")

# acks=all + idempotence: a send is acknowledged only once it is durable, and retries never duplicate.
# murmur2_random: the same key -> partition mapping as the Java client and aiokafka (Faust).
PRODUCER_DEFAULTS = {
    "acks": "all",
    "enable.idempotence": True,
    "partitioner": "murmur2_random",
    "linger.ms": 5,
}


def _base(topology: Topology) -> dict:
    """Settings shared by every confluent-kafka client of this topology (secrets read from the env now)."""
    return {"bootstrap.servers": topology.kafka.bootstrap, **librdkafka_security(topology.kafka.security),
            **topology.kafka.client, "logger": KAFKA_LOG}


def admin(topology: Topology) -> AdminClient:
    return AdminClient(_base(topology))


def producer(topology: Topology, **overrides: object) -> Producer:
    """An idempotent producer (acks=all); `transactional.id` in overrides makes it transactional."""
    return Producer({**_base(topology), **PRODUCER_DEFAULTS, **overrides})


def consumer(topology: Topology, group: str, **overrides: object) -> Consumer:
    """A consumer that never commits unless asked (tools read, stages commit), and that reads only committed
    transactions: records of an aborted or still open transaction (an exactly-once stage's) are never seen."""
    conf = {
        **_base(topology),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        **overrides,
    }
    return Consumer(conf)
