"""Produce JSON Lines or CSV records to a topic: validated against its Avro schema, keyed, acked by all replicas."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import KafkaError, KafkaException, Message

from pipeline.avro.schemas import AvroError
from pipeline.kafka.clients import producer
from pipeline.config import Topology
from pipeline.errors import ConfigError, PipelineError
from pipeline.avro.codecs import codec_for, schema_store


class BadLine(Exception):
    """One input line that cannot become a record; the rest of the input goes on."""


@dataclass
class ProduceReport:
    topic: str
    sent: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    per_partition: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.failed


def _open(source: str) -> TextIO:
    return sys.stdin if source == "-" else open(source, encoding="utf-8", newline="")


def _count_lines(source: str) -> int | None:
    if source == "-":
        return None
    with open(source, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_jsonl(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, record or the reason it is not one); blank lines are skipped."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, BadLine(f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            yield number, BadLine(f"expected a JSON object, got {type(value).__name__}")
            continue
        yield number, value


def read_csv(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Rows as records: empty cells are null, `metadata.KEY` columns fill the metadata map."""
    reader = csv.DictReader(stream)
    for row in reader:
        number = reader.line_num
        if None in row:
            yield number, BadLine(f"{len(row[None])} more cell(s) than header columns")
            continue
        record: dict[str, Any] = {}
        for column, cell in row.items():
            if column.startswith("metadata."):
                if cell:
                    record.setdefault("metadata", {})[column.removeprefix("metadata.")] = cell
            else:
                record[column] = cell if cell != "" else None
        yield number, record


def detect_format(source: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "csv" if source.lower().endswith(".csv") else "jsonl"


def produce_file(
    topology: Topology,
    topic: str,
    source: str,
    fmt: str | None = None,
    strict: bool = False,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> ProduceReport:
    """Send every valid record of `source` to `topic`; bad lines are reported, not sent."""
    spec = topology.topic(topic)
    codec = codec_for(topology, topic)
    field_names = {f["name"] for f in schema_store(topology).current(spec.value_schema).raw["fields"]}
    if source != "-" and not Path(source).is_file():
        raise PipelineError(f"{source}: no such file (give a .jsonl or .csv file, or - for stdin)")
    fmt = detect_format(source, fmt)
    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"unknown input format '{fmt}': use jsonl or csv")
    total = _count_lines(source)
    if total is not None and fmt == "csv":
        total = max(total - 1, 0)
    report = ProduceReport(topic)
    kafka = producer(topology)

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            report.failed.append(f"key {msg.key()!r}: {err.str()}")
        else:
            report.sent += 1
            report.per_partition[msg.partition()] += 1

    started = time.perf_counter()
    done = 0
    with _open(source) as stream:
        rows = read_jsonl(stream) if fmt == "jsonl" else read_csv(stream)
        for number, record in rows:
            done += 1
            try:
                if isinstance(record, BadLine):
                    raise record
                unknown = set(record) - field_names
                if unknown:
                    raise BadLine(
                        f"unknown field(s) {', '.join(sorted(unknown))}; "
                        f"{spec.value_schema} has {', '.join(sorted(field_names))}"
                    )
                value = codec.encode(record)
                key = _key(record, spec.key_field)
            except (BadLine, AvroError) as exc:
                report.rejected.append((number, str(exc)))
                if strict:
                    break
                continue
            try:
                _send(kafka, topic, key, value, delivered)
            except KafkaException as exc:  # e.g. larger than the broker's message size limit
                report.rejected.append((number, f"not accepted by the producer: {exc.args[0].str()}"))
                if strict:
                    break
                continue
            if on_progress and done % 200 == 0:
                on_progress(done, total)
    remaining = kafka.flush(60)
    if remaining:
        report.failed.append(f"{remaining} record(s) not acknowledged within 60 s")
    report.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(done, total)
    return report


def _key(record: dict[str, Any], key_field: str | None) -> bytes | None:
    value = record.get(key_field) if key_field else None
    return None if value is None else str(value).encode()


def _send(kafka: Any, topic: str, key: bytes | None, value: bytes, callback: Callable) -> None:
    while True:
        try:
            kafka.produce(topic, value=value, key=key, on_delivery=callback)
            kafka.poll(0)
            return
        except BufferError:  # local queue full: let deliveries drain, then retry the same record
            kafka.poll(0.1)

