"""The gateway's Prometheus series (served by pipeline.runtime.shell)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.runtime.metrics import BATCH_BUCKETS

FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class GatewayMetrics:
    """Requests by subject and outcome, batching, model time, latency and recording; one registry per process."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("pipeline_gateway_requests", "Requests answered, by subject and outcome (ok or "
                                "the error code)", ["subject", "outcome"], registry=r)
        self.batch_size = Histogram("pipeline_gateway_batch_size", "Requests per model call", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("pipeline_gateway_queue_wait_seconds", "From receipt until its batch ran",
                                    ["stage"], buckets=FAST_BUCKETS, registry=r)
        self.model_seconds = Histogram("pipeline_gateway_model_seconds", "Model time per batch", ["stage"],
                                       buckets=FAST_BUCKETS, registry=r)
        self.latency = Histogram("pipeline_gateway_latency_seconds", "From receipt to the reply sent, in the "
                                 "gateway", ["subject"], buckets=FAST_BUCKETS, registry=r)
        self.recorded = Counter("pipeline_gateway_records_sent", "Exchanges the broker acknowledged on "
                                "gateway.record_to", registry=r)
        self.record_failures = Counter("pipeline_gateway_record_failures", "Exchanges that could not be recorded "
                                       "to gateway.record_to (queue-full, encode, produce, delivery)", ["reason"],
                                       registry=r)
        self.broker_up = Gauge("pipeline_broker_up", "1 while the Kafka bootstrap address accepts connections, 0 "
                               "during a broker outage (probed every second; only when recording to Kafka)",
                               registry=r)
