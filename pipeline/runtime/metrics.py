"""Prometheus metrics of a stage process (served by pipeline.runtime.shell), and reading them back."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self._lag = Gauge("pipeline_consumer_lag", "Records after the committed offset, per input partition this "
                          "worker owns, from its consumer's own watermarks", ["stage", "partition"],
                          registry=self.registry)
        self._lagging: set[int] = set()  # partitions with a lag series
        self._transactions = Counter("pipeline_transactions", "Kafka transactions ended (exactly-once stages), "
                                     "by outcome: committed or aborted", ["stage", "outcome"], registry=self.registry)

    def transactions(self, outcome: str) -> Counter:
        return self._transactions.labels(stage=self.stage, outcome=outcome)

    def dead_lettered(self, reason: str) -> Counter:
        return self._dead.labels(stage=self.stage, reason=reason)

    def set_lag(self, lags: dict[int, int], owned: frozenset[int]) -> None:
        """This worker's partitions' lag; the series of partitions it no longer owns are removed."""
        for partition in self._lagging - owned:
            self._lag.remove(self.stage, str(partition))
        self._lagging &= owned
        for partition, lag in lags.items():
            self._lag.labels(stage=self.stage, partition=str(partition)).set(lag)
            self._lagging.add(partition)


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
