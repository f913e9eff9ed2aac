"""A stage worker with one injected fault, started instead of `python -m pipeline run STAGE` (test harness).

    PIPELINE_FAULT=STEP:ERROR:TIMES[:KEY] PIPELINE_FAULT_COUNT=FILE python tests/fault_worker.py CONFIG STAGE

STEP raises ERROR the first TIMES times it runs (process: on batches of two or more) (counted in FILE, so across restarts of the worker), then the
worker runs normally. With KEY, only records with that key fire (produce and delivery steps).
Steps: decode, process, encode, produce (synchronous), delivery (the asynchronous report), flush, ack (the commit).
Errors: KafkaException, TooLarge (KafkaError MSG_SIZE_TOO_LARGE), ValueError, RuntimeError, MemoryError,
TransientError. At `delivery`, KafkaException and TooLarge become a failed delivery report; the others are
raised from the delivery callback, so they escape poll()/flush().
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import KafkaError, KafkaException  # noqa: E402

from pipeline.config import load_topology  # noqa: E402
from pipeline.kafka.reader import InputReader  # noqa: E402
from pipeline.runtime.app import run_worker  # noqa: E402
from pipeline.runtime.batch import BatchHandler  # noqa: E402
from pipeline.runtime.stage import TransientError  # noqa: E402

STEP, ERROR, TIMES, *KEY = os.environ["PIPELINE_FAULT"].split(":")
COUNT = Path(os.environ["PIPELINE_FAULT_COUNT"])
STEPS = {"decode", "process", "encode", "produce", "delivery", "flush", "ack"}
ERRORS = {
    "KafkaException": lambda: KafkaException(KafkaError(KafkaError._FATAL, "injected fault", fatal=True)),
    "TooLarge": lambda: KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "injected fault: too large")),
    "ValueError": lambda: ValueError("injected fault"),
    "RuntimeError": lambda: RuntimeError("injected fault"),
    "MemoryError": lambda: MemoryError("injected fault"),
    "TransientError": lambda: TransientError("injected fault"),
}
DELIVERY_ERRORS = {"KafkaException": KafkaError._MSG_TIMED_OUT, "TooLarge": KafkaError.MSG_SIZE_TOO_LARGE}
assert STEP in STEPS and ERROR in ERRORS, os.environ["PIPELINE_FAULT"]


def fire(key: bytes | None = None) -> bool:
    """Whether the fault fires now; counts the firing."""
    if KEY and key != KEY[0].encode():
        return False
    fired = int(COUNT.read_text() or 0) if COUNT.exists() else 0
    if fired >= int(TIMES):
        return False
    COUNT.write_text(str(fired + 1))
    print(f"FAULT {STEP} {ERROR} {fired + 1}/{TIMES}", file=sys.stderr, flush=True)
    return True


def faulty(fn: Any, min_items: int = 0) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if (not min_items or len(args[0]) >= min_items) and fire():
            raise ERRORS[ERROR]()
        return fn(*args, **kwargs)
    return call


class Proxy:
    """Another object's attributes, with some replaced."""

    def __init__(self, real: Any, **replaced: Any) -> None:
        self.__dict__.update(replaced, _real=real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class FaultyProducer(Proxy):
    def __init__(self, real: Any, output: str) -> None:
        super().__init__(real)
        self.output = output

    def produce(self, topic: str, value: Any = None, key: Any = None, on_delivery: Any = None, **kw: Any) -> None:
        if topic != self.output:  # dead letters are not part of the fault
            return self._real.produce(topic, value=value, key=key, on_delivery=on_delivery, **kw)
        if STEP == "produce" and fire(key):
            raise ERRORS[ERROR]()
        if STEP == "delivery" and fire(key):
            def report(err: KafkaError | None, msg: Any) -> None:
                if ERROR not in DELIVERY_ERRORS:
                    raise ERRORS[ERROR]()
                on_delivery(KafkaError(DELIVERY_ERRORS[ERROR], "injected fault"), msg)
            return self._real.produce(topic, value=value, key=key, on_delivery=report, **kw)
        return self._real.produce(topic, value=value, key=key, on_delivery=on_delivery, **kw)


_init = BatchHandler.__init__


def init(self: BatchHandler, stage: Any, topology: Any, *args: Any, **kw: Any) -> None:
    _init(self, stage, topology, *args, **kw)
    if STEP == "decode":
        self.in_codec = Proxy(self.in_codec, decode=faulty(self.in_codec.decode))
    elif STEP == "process":
        # Only a batch of several fires: a record alone in its batch is rejected, not bisected, by design.
        stage.process = faulty(stage.process, min_items=2)
    elif STEP == "encode":
        self.out_codec = Proxy(self.out_codec, encode=faulty(self.out_codec.encode))
    elif STEP in ("produce", "delivery"):
        self.sender.producer = FaultyProducer(self.sender.producer, stage.spec.output)
    elif STEP == "flush":
        self.sender.flush = faulty(self.sender.flush)


_commit = InputReader.commit


def commit(self: InputReader, offsets: dict[int, int], wait: bool = False) -> None:
    if STEP == "ack" and fire():
        raise ERRORS[ERROR]()
    _commit(self, offsets, wait)


BatchHandler.__init__ = init
InputReader.commit = commit

if __name__ == "__main__":
    config, stage_name = sys.argv[1:3]
    run_worker(load_topology(config), stage_name, 0, "warn")
