"""Prometheus metrics of a stage process, and its /metrics, /healthz and /ready pages."""

from __future__ import annotations

import threading

import faust
from faust.exceptions import ConsumerNotStarted
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FILL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300)


class StageMetrics:
    """The series every stage exports; one registry per process."""

    def __init__(self, stage: str) -> None:
        self.registry = CollectorRegistry()
        self.stage = stage

        def series(kind, name: str, doc: str, **kw):
            return kind(name, doc, ["stage"], registry=self.registry, **kw).labels(stage=stage)

        self.events_in = series(Counter, "pipeline_events_in", "Records consumed")
        self.events_out = series(Counter, "pipeline_events_out", "Records produced")
        self.batch_size = series(Histogram, "pipeline_batch_size", "Records per batch", buckets=BATCH_BUCKETS)
        self.batch_fill = series(Histogram, "pipeline_batch_fill_ratio", "Records per batch / batch.max_records",
                                 buckets=FILL_BUCKETS)
        self.batch_seconds = series(Histogram, "pipeline_batch_seconds", "Wall time per batch")
        self.process_seconds = series(Histogram, "pipeline_process_seconds", "Stage (model) time per batch")
        self.latency = series(Histogram, "pipeline_ingest_to_now_seconds",
                              "Age of each record when its batch is done, counted from when its source was "
                              "ingested (lineage.ingest_time_ms) or else its Kafka timestamp",
                              buckets=LATENCY_BUCKETS)
        self.last_batch = series(Gauge, "pipeline_last_batch_timestamp_seconds", "When the last batch was done")
        self.retries = series(Counter, "pipeline_transient_retries", "Batches retried after a transient failure")
        self.stuck = series(Gauge, "pipeline_stuck_on_transient_error", "1 while the stage retries a failing batch")
        self.broker_up = series(Gauge, "pipeline_broker_up", "1 while the Kafka bootstrap address accepts "
                                "connections, 0 during a broker outage (probed every second)")
        self._dead = Counter("pipeline_dead_lettered", "Records sent to the dead-letter topic",
                             ["stage", "reason"], registry=self.registry)
        self._lag = Gauge("pipeline_consumer_lag", "Records after the group's committed offset, per input "
                          "partition, read from the broker", ["stage", "partition"], registry=self.registry)

    def dead_lettered(self, reason: str) -> Counter:
        return self._dead.labels(stage=self.stage, reason=reason)

    def set_lag(self, lags: dict[int, int]) -> None:
        for partition, lag in lags.items():
            self._lag.labels(stage=self.stage, partition=str(partition)).set(lag)


def scrape(text: str) -> dict[str, float]:
    """Prometheus text as {series name: value}, summed over labels (buckets keep their `le`: name{le})."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = f"{sample.name}{{{sample.labels['le']}}}" if "le" in sample.labels else sample.name
            values[name] = values.get(name, 0.0) + sample.value
    return values


def read_metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """The series a /metrics page serves, as `scrape` gives them; OSError when it does not answer in time."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return scrape(response.read().decode())


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a histogram's cumulative (upper bound, count) buckets, interpolated inside the
    bucket as Prometheus' histogram_quantile does."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def add_pages(app: faust.App, ready: threading.Event, m: StageMetrics) -> None:
    """GET /metrics (Prometheus), /healthz (the event loop answers), /ready (model loaded, partitions assigned)."""

    class Metrics(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            return self.bytes(generate_latest(m.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    class Health(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            return self.json({"ok": True})

    class Ready(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            try:
                assigned = len(app.consumer.assignment()) if app.consumer else 0
            except ConsumerNotStarted:  # asked while the worker starts: not ready yet, not an error
                assigned = 0
            ok = ready.is_set() and assigned > 0
            return self.json({"ready": ok, "model_loaded": ready.is_set(), "partitions": assigned},
                             status=200 if ok else 503)

    app.page("/metrics", name="metrics")(Metrics)
    app.page("/healthz", name="healthz")(Health)
    app.page("/ready", name="ready")(Ready)
