"""A stage's Kafka transactions (exactly-once): begin, then commit outputs and input offsets together, following
librdkafka's error rules: a retriable error retries the same call, an abortable one aborts (the batches are
processed again from the last commit), a fatal one (a newer producer with the same transactional.id, or a
zombie whose group moved on) ends the worker."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline.kafka.transaction")
T = TypeVar("T")
CALL_TIMEOUT_S = 30.0
# As Kafka Streams' exactly-once: the coordinator aborts a transaction left open this long (a killed worker's).
TRANSACTION_TIMEOUT_MS = 10_000


class Abortable(Exception):
    """The open transaction cannot commit; abort it and process its batches again from the last commit."""


class Stopped(Exception):
    """The worker is stopping while a transaction call is retried: the transaction stays open (and is aborted by
    the restarted worker's init, or by the coordinator after the transaction timeout)."""


class Fenced(PipelineError):
    """This producer may never commit again (fenced or fatal): the worker exits and is restarted."""


def transactional_id(group: str, replica: int) -> str:
    """Stable across restarts of the same worker, so the restarted producer's init fences the killed one and
    aborts its open transaction at once (instead of after the transaction timeout)."""
    return f"{group}.{socket.gethostname()}.{replica}"


def producer_settings(group: str, replica: int) -> dict[str, object]:
    return {"transactional.id": transactional_id(group, replica),
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS}


class Transactions:
    """The transactions of one producer, whose records are consumed-and-produced for one consumer group."""

    def __init__(self, producer: Producer, group_metadata: Callable[[], object],
                 stopping: threading.Event) -> None:
        self.producer = producer
        self.group_metadata = group_metadata  # the consumer's latest group metadata (member, generation)
        self.stopping = stopping
        self.open = False

    def init(self) -> None:
        """Register the transactional.id (fencing an older producer of it), waiting for the broker if needed."""
        try:
            self._call("init", lambda: self.producer.init_transactions(CALL_TIMEOUT_S))
        except Abortable as exc:
            raise PipelineError(f"cannot start Kafka transactions ({exc}): does the principal have the "
                                "TransactionalId and IdempotentWrite rights?") from None

    def begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Add the input offsets to the transaction and commit it: outputs, dead letters and offsets at once.
        Raises Abortable (then call `abort`) or Fenced."""
        if offsets:
            self._call("send offsets", lambda: self.producer.send_offsets_to_transaction(
                offsets, self.group_metadata(), CALL_TIMEOUT_S))
        self._call("commit", lambda: self.producer.commit_transaction(CALL_TIMEOUT_S))
        self.open = False

    def abort(self) -> bool:
        """Abort the open transaction: its records are never shown to read_committed readers. Retried while
        the broker is away; False if the worker stopped first (its restart's init aborts it instead)."""
        try:
            self._call("abort", lambda: self.producer.abort_transaction(CALL_TIMEOUT_S), retry_all=True)
        except Stopped:
            return False
        self.open = False
        return True

    def _call(self, what: str, call: Callable[[], T], retry_all: bool = False) -> T:
        """`call`, retried with backoff on a retriable error (`retry_all`: on any error but a fatal one)."""
        backoff = 0.5
        while True:
            try:
                return call()
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise Fenced(f"the transactional producer was fenced or failed for good ({what}: "
                                 f"{error.str()}); restarting the worker") from None
                if not retry_all and (error.txn_requires_abort() or not error.retriable()):
                    raise Abortable(f"{what}: {error.str()}") from None
                log.warning("transaction %s failed (%s); retrying in %.1f s", what, error.str(), backoff)
            if self.stopping.wait(backoff):
                raise Stopped()
            backoff = min(backoff * 2, 10.0)
