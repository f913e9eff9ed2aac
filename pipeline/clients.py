"""confluent-kafka clients configured the way every part of the pipeline needs them."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer

from pipeline.config import Topology

# acks=all + idempotence: a send is acknowledged only once it is durable, and retries never duplicate.
# murmur2_random: the same key -> partition mapping as the Java client and aiokafka (Faust).
PRODUCER_DEFAULTS = {
    "acks": "all",
    "enable.idempotence": True,
    "partitioner": "murmur2_random",
    "linger.ms": 5,
}


def producer(topology: Topology, **overrides: object) -> Producer:
    return Producer({**topology.kafka_config(), **PRODUCER_DEFAULTS, **overrides})


def consumer(topology: Topology, group: str, **overrides: object) -> Consumer:
    """A consumer that never commits unless asked (tools read, stages commit)."""
    conf = {
        **topology.kafka_config(),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **overrides,
    }
    return Consumer(conf)
