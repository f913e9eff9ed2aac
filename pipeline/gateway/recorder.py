"""Records every exchange to a Kafka topic from a background thread: never on the reply path, and every record
that could not be sent counted in a metric."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from confluent_kafka import KafkaException

from pipeline.avro.codecs import codec_for
from pipeline.config import Topology
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.kafka.keys import record_key
from pipeline.kafka.sender import Sender

log = logging.getLogger("pipeline.gateway.recorder")
# librdkafka logs every refused connection while the broker is away; the recorder reports what it could not send.
_librdkafka = logging.getLogger("pipeline.gateway.librdkafka")
_librdkafka.setLevel(logging.CRITICAL)
QUEUE_SIZE = 10000  # exchanges waiting for the producer; past that they are counted as queue-full, not kept
FLUSH_EVERY = 0.2  # seconds


class Recorder:
    """`record()` queues an Exchange record and returns at once; a thread encodes, produces and checks delivery."""

    def __init__(self, topology: Topology, topic: str, metrics: GatewayMetrics) -> None:
        self.topic = topic
        self.codec = codec_for(topology, topic)
        self.key_field = topology.topic(topic).key_field
        # A delivery that fails is reported within message.timeout.ms, so an outage shows in the metric soon.
        self.sender = Sender(topology, **{"message.timeout.ms": 30000, "logger": _librdkafka})
        self.m = metrics
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._acked = 0
        self._thread = threading.Thread(target=self._run, name="gateway-recorder", daemon=True)
        self._thread.start()

    def record(self, record: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.m.record_failures.labels("queue-full").inc()

    def _run(self) -> None:
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                first = self.queue.get(timeout=FLUSH_EVERY)
            except queue.Empty:
                self._settle(0)
                continue
            batch = [first]
            while len(batch) < 1000:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            for record in batch:
                self._send(record)
            self._settle(0.5)

    def _send(self, record: dict[str, Any]) -> None:
        try:
            value = self.codec.encode(record)
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the recorder
            log.warning("cannot encode the exchange of request %s: %s", record.get("request_id"), exc)
            self.m.record_failures.labels("encode").inc()
            return
        try:
            self.sender.send(self.topic, value, key=record_key(record, self.key_field))
        except KafkaException as exc:
            log.warning("cannot produce the exchange of request %s: %s", record.get("request_id"), exc)
            self.m.record_failures.labels("produce").inc()

    def _settle(self, timeout: float) -> None:
        """Deliveries so far into the metrics; records still in flight are counted when they settle."""
        barrier = self.sender.flush(timeout)
        if barrier.failures:
            log.warning("%d exchange(s) not recorded to %s: %s", len(barrier.failures), self.topic,
                        barrier.failures[0])
            self.m.record_failures.labels("delivery").inc(len(barrier.failures))
        self.m.recorded.inc(self.sender.acked - self._acked)
        self._acked = self.sender.acked

    def close(self, timeout: float = 10.0) -> int:
        """Send what is queued and wait for it (at most `timeout` s); the count of records still unsent."""
        self._stop.set()
        self._thread.join(timeout)
        barrier = self.sender.flush(timeout)
        if barrier.failures:
            self.m.record_failures.labels("delivery").inc(len(barrier.failures))
        if barrier.unacked:
            self.m.record_failures.labels("delivery").inc(barrier.unacked)
        self.m.recorded.inc(self.sender.acked - self._acked)
        self._acked = self.sender.acked
        return barrier.unacked + self.queue.qsize()
