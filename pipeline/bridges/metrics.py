"""A source bridge's Prometheus series (served by pipeline.runtime.shell)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BridgeMetrics:
    """The series of one bridge process; labelled by bridge name and source kind."""

    def __init__(self, bridge: str, kind: str) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"bridge": bridge, "kind": kind}

        def series(cls, name: str, doc: str):
            return cls(name, doc, ["bridge", "kind"], registry=self.registry).labels(**self.labels)

        self.messages_in = series(Counter, "pipeline_bridge_messages_in", "Messages read from the source")
        self.messages_out = series(Counter, "pipeline_bridge_messages_out", "Records Kafka acknowledged on the "
                                   "target topic")
        self.dead_letters = series(Counter, "pipeline_bridge_dead_letters", "Messages sent to the dead-letter topic")
        self.acked = series(Counter, "pipeline_bridge_acked", "Messages acknowledged at the source")
        self.retries = series(Counter, "pipeline_bridge_retries", "Reads, sends or acks tried again after a failure")
        self.stuck = series(Gauge, "pipeline_bridge_stuck", "1 while the bridge retries the source or Kafka")
        self.backlog = series(Gauge, "pipeline_bridge_source_backlog", "Messages waiting at the source: JetStream "
                              "num_pending + ack pending, RabbitMQ queue depth, Redis pending + lag")
        self.given_up = series(Counter, "pipeline_bridge_given_up", "Messages Kafka refused for good, handed to "
                               "the source's dead-letter route (RabbitMQ dead-letter exchange)")
        self.batches = series(Counter, "pipeline_bridge_batches", "Batches delivered and acked")
        self.broker_up = series(Gauge, "pipeline_broker_up", "1 while the Kafka bootstrap address accepts "
                                "connections, 0 during a broker outage (probed every second)")

    def total(self, counter: str) -> int:
        """A counter's value so far, e.g. total("messages_out")."""
        return int(self.registry.get_sample_value(f"pipeline_bridge_{counter}_total", self.labels) or 0)
