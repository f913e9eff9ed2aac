"""Produce JSON Lines or CSV records to a topic: validated against its Avro schema, keyed, acked by all replicas.
Bad lines are reported and skipped; whatever stops the run (end of input, Ctrl-C, an error), what was handed to
the producer is flushed and counted before returning."""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from confluent_kafka import KafkaException

from pipeline.avro.codecs import codec_for, schema_store
from pipeline.avro.schemas import AvroError
from pipeline.config import Topology
from pipeline.errors import ConfigError, PipelineError
from pipeline.kafka.keys import record_key
from pipeline.kafka.limits import RECORD_OVERHEAD, Limit, record_size
from pipeline.kafka.sender import Sender

BOM = b"\xef\xbb\xbf"
FLUSH_SECONDS = 60.0


class BadLine(Exception):
    """One input line that cannot become a record; the rest of the input goes on."""


@dataclass
class ProduceReport:
    topic: str
    read: int = 0  # non-blank lines (JSONL) or rows (CSV) read
    sent: int = 0  # acknowledged by the broker
    rejected: list[tuple[int, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # handed to the producer, refused by the broker
    unconfirmed: int = 0  # handed to the producer, neither acknowledged nor refused when we stopped waiting
    per_partition: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C stopped the reading
    error: str | None = None  # an unexpected error stopped the reading
    last_line: int = 0  # the last line read

    @property
    def not_delivered(self) -> int:
        return len(self.failed) + self.unconfirmed

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.not_delivered and not self.interrupted and self.error is None

    @property
    def empty(self) -> bool:
        return self.read == 0 and self.ok


class _CtrlC:
    """Ctrl-C (SIGINT) stops the reading, but never half-way through a send or a delivery callback, so the
    counts stay exact: it raises KeyboardInterrupt only while the input is being read, and otherwise is noted
    and acted on before the next line. A second Ctrl-C stops the wait for outstanding acknowledgements."""

    def __init__(self) -> None:
        self.count = 0
        self.reading = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.reading:
            self.reading = False
            raise KeyboardInterrupt

    def lines(self, rows: Iterator[Any]) -> Iterator[Any]:
        """`rows`, with Ctrl-C able to interrupt the (possibly blocking) read of each."""
        while True:
            if self.count:
                raise KeyboardInterrupt
            self.reading = True
            try:
                item = next(rows)
            except StopIteration:
                return
            finally:
                self.reading = False
            if self.count:
                raise KeyboardInterrupt
            yield item


def _open(source: str) -> BinaryIO:
    return sys.stdin.buffer if source == "-" else open(source, "rb")


def _count_lines(source: str) -> int | None:
    if source == "-":
        return None
    with open(source, "rb") as f:
        return sum(1 for line in f if line.strip())


def _not_utf8(line: bytes, exc: UnicodeDecodeError) -> BadLine:
    return BadLine(f"not valid UTF-8: byte 0x{line[exc.start]:02x} at byte {exc.start + 1} of the line")


def read_jsonl(stream: Iterable[bytes | str]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, record or the reason it is not one); blank lines are skipped. Each line is decoded on its
    own, so a line that is not UTF-8 is one bad line, not the end of the input."""
    for number, raw in enumerate(stream, start=1):
        if isinstance(raw, bytes):
            if number == 1:
                raw = raw.removeprefix(BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, _not_utf8(raw, exc)
                continue
        else:
            line = raw
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


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes stand for the bytes that were not UTF-8
        return False
    return True


def read_csv(stream: Iterable[bytes | str]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Rows as records: empty cells are null, `metadata.KEY` columns fill the metadata map. A row with bytes
    that are not UTF-8 is one bad line."""
    def text(stream: Iterable[bytes | str]) -> Iterator[str]:
        for number, raw in enumerate(stream, start=1):
            if isinstance(raw, bytes):
                raw = raw.removeprefix(BOM) if number == 1 else raw
                raw = raw.decode("utf-8", "surrogateescape")
            yield raw

    reader = csv.DictReader(text(stream))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        yield 1, BadLine(f"unreadable CSV header: {exc}")
        return
    if not all(_is_utf8(name) for name in header):
        yield 1, BadLine("the CSV header is not valid UTF-8; nothing after it can be read")
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, BadLine(f"unreadable CSV: {exc}")
            continue
        number = reader.line_num
        if None in row:
            yield number, BadLine(f"{len(row[None])} more cell(s) than header columns")
            continue
        bad = [column for column, cell in row.items() if cell is not None and not _is_utf8(cell)]
        if bad:
            yield number, BadLine(f"not valid UTF-8 in column {', '.join(bad)}")
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
    """Send every valid record of `source` to `topic`; bad lines are reported, not sent. Returns once every
    record handed to the producer is acknowledged or failed, also when Ctrl-C or an error stopped the reading."""
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
    limit = Limit.read(topology, topic)
    report = ProduceReport(topic)
    # librdkafka does not split a batch the broker refuses: keep batches within the topic's limit too.
    sender = Sender(topology, **{"batch.size": min(limit.client, limit.topic_max - RECORD_OVERHEAD)})
    started = time.perf_counter()
    with _CtrlC() as ctrl_c, _open(source) as stream:
        try:
            rows = read_jsonl(stream) if fmt == "jsonl" else read_csv(stream)
            for number, record in ctrl_c.lines(rows):
                report.read += 1
                report.last_line = number
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
                    key = record_key(record, spec.key_field)
                    size = record_size(value, key)
                    if size > limit.bytes:
                        raise BadLine(f"record too large: {size:,} bytes with its key and framing, over the limit "
                                      f"of {limit}; not sent")
                    try:
                        sender.send(topic, value, key, tag=number)
                    except KafkaException as exc:  # refused by the producer itself
                        raise BadLine(f"not accepted by the producer: {exc.args[0].str()}") from None
                except (BadLine, AvroError) as exc:
                    report.rejected.append((number, str(exc)))
                    if strict:
                        break
                if on_progress and report.read % 200 == 0:
                    on_progress(report.read, total)
        except KeyboardInterrupt:
            report.interrupted = True
        except Exception as exc:  # a broker error, a bug: still flush and report what was sent
            report.error = f"{type(exc).__name__}: {exc}"
        finally:
            _settle(sender, report, ctrl_c)
    report.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(report.read, total)
    return report


def _settle(sender: Sender, report: ProduceReport, ctrl_c: _CtrlC) -> None:
    """Wait for every outstanding acknowledgement (at most FLUSH_SECONDS, or until a second Ctrl-C)."""
    interrupts = ctrl_c.count
    deadline = time.monotonic() + FLUSH_SECONDS
    while True:
        barrier = sender.flush(0.5)
        report.failed += [f"line {f.tag}: {f.error.str()}" for f in barrier.failures]
        if not barrier.unacked:
            break
        if ctrl_c.count > interrupts or time.monotonic() > deadline:
            report.unconfirmed = barrier.unacked
            break
    report.sent = sender.acked
    report.per_partition = Counter(sender.per_partition)
