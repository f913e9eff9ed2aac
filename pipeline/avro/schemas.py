"""Avro schemas kept in `schemas/` and the single-object encoding (magic C3 01 + CRC-64-AVRO fingerprint)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from pipeline.errors import ConfigError, PipelineError

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
_FILE_NAME = re.compile(r"^(?P<stem>.+)\.v(?P<version>\d+)\.avsc$")


class AvroError(PipelineError):
    """A record could not be encoded or decoded; `reason` is a short code for dead-letter headers."""

    reason = "avro-error"


class EmptyValue(AvroError):
    """The value is null (a tombstone) or 0 bytes long."""

    reason = "empty-value"


class TruncatedHeader(AvroError):
    """The value starts like the framing's header but ends before the header does."""

    reason = "truncated-header"


class BadMagic(AvroError):
    """The value does not start with the framing's magic bytes."""

    reason = "bad-magic"


class UnknownSchema(AvroError):
    """The schema fingerprint (or registry schema id) is not one this pipeline knows."""

    reason = "unknown-schema"


class WrongType(AvroError):
    """A known schema, but of another record type than the topic carries."""

    reason = "wrong-type"


class CorruptRecord(AvroError):
    """The header is fine but the body is not a record of its schema (cut short, garbled, trailing bytes)."""

    reason = "corrupt-record"


class InvalidRecord(AvroError):
    reason = "invalid-record"


class Codec(Protocol):
    """Turns records of one type into bytes and back."""

    def encode(self, record: dict[str, Any], validate: bool = True) -> bytes: ...

    def decode(self, data: bytes) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    path: Path
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian, as written after the magic


def _fingerprint(raw: dict[str, Any]) -> bytes:
    # fastavro returns the CRC-64-AVRO fingerprint as hex of its little-endian bytes.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))


@dataclass
class SchemaStore:
    """Every version of every record schema found in a folder of `<stem>.v<N>.avsc` files."""

    folder: Path
    versions: dict[str, list[SchemaVersion]] = field(default_factory=dict)
    by_fingerprint: dict[bytes, SchemaVersion] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> SchemaStore:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder}: schema folder not found (set schemas_dir in topics.yaml)")
        store = cls(folder)
        for path in sorted(folder.glob("*.avsc")):
            store._add(path)
        for versions in store.versions.values():
            versions.sort(key=lambda v: v.version)
        return store

    def _add(self, path: Path) -> None:
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ConfigError(f"{path}: schema files must be named <name>.v<N>.avsc, e.g. passage.v1.avsc")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            parsed = parse_schema(raw, named_schemas={})
        except Exception as exc:  # fastavro raises several types for a bad schema
            raise ConfigError(f"{path}: not a valid Avro schema: {exc}") from None
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise ConfigError(f"{path}: each schema file must hold one Avro record type")
        name = parsed["name"]  # full name, namespace included
        version = SchemaVersion(name, int(match["version"]), path, raw, parsed, _fingerprint(raw))
        for other in self.versions.get(name, []):
            if other.version == version.version:
                raise ConfigError(f"{path}: version {version.version} of {name} is also in {other.path}")
        clash = self.by_fingerprint.get(version.fingerprint)
        if clash is not None:
            raise ConfigError(f"{path}: same canonical schema as {clash.path}; keep one of them")
        self.versions.setdefault(name, []).append(version)
        self.by_fingerprint[version.fingerprint] = version

    def names(self) -> set[str]:
        return set(self.versions)

    def current(self, name: str) -> SchemaVersion:
        """The newest version of a record: the one writers use and readers read into."""
        if name not in self.versions:
            known = ", ".join(sorted(self.versions)) or "none"
            raise ConfigError(f"no schema named '{name}' in {self.folder} (known: {known})")
        return self.versions[name][-1]

    def codec(self, name: str) -> SingleObjectCodec:
        return SingleObjectCodec(self, name)


def validation_message(exc: ValidationError) -> str:
    """One short line per failing field: where, what it got, what the schema expects."""
    parts = []
    for err in exc.errors:
        expected = err.schema if isinstance(err.schema, str) else json.dumps(err.schema)[:80]
        got = repr(err.datum)
        parts.append(f"{err.field or 'record'}: got {got[:60]}, expected {expected}")
    return "; ".join(parts) or str(exc)


def check_record(record: dict[str, Any], schema: SchemaVersion) -> None:
    """Raise InvalidRecord naming the offending field when `record` does not fit `schema`."""
    # fastavro builds (and JSON-formats) an error for every union branch a value does not take when raising is
    # on, valid records included: check without it first, and ask for the reasons only for an invalid record.
    if validate(record, schema.parsed, raise_errors=False):
        return
    try:
        validate(record, schema.parsed, raise_errors=True)
    except ValidationError as exc:
        raise InvalidRecord(f"not a valid {schema.name}: {validation_message(exc)}") from None


class SingleObjectCodec:
    """Avro single-object encoding, reading any known writer version into the current schema."""

    def __init__(self, store: SchemaStore, name: str) -> None:
        self.store = store
        self.writer = store.current(name)
        self.name = name

    def encode(self, record: dict[str, Any], validate: bool = True) -> bytes:
        if validate:
            check_record(record, self.writer)
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(self.writer.fingerprint)
        try:
            schemaless_writer(out, self.writer.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidRecord(f"cannot encode as {self.name}: {exc}") from None
        return out.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        check_header(data, MAGIC, HEADER_SIZE, "Avro single-object encoding",
                     f"magic {MAGIC.hex()} + 8-byte schema fingerprint")
        fingerprint_ = data[len(MAGIC):HEADER_SIZE]
        found = self.store.by_fingerprint.get(fingerprint_)
        if found is None:
            raise UnknownSchema(
                f"unknown schema fingerprint {fingerprint_.hex()}: no schema in {self.store.folder} has it; "
                f"add the writer's .avsc there"
            )
        if found.name != self.name:
            raise WrongType(f"record is a {found.name} (v{found.version}, fingerprint {fingerprint_.hex()}), "
                            f"this topic carries {self.name}")
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        reader = None if found is self.writer else self.writer.parsed
        try:
            record = schemaless_reader(body, found.parsed, reader)
        except Exception as exc:  # truncated or garbled bodies fail in many ways inside fastavro
            raise CorruptRecord(f"corrupt {self.name} body (v{found.version}, {len(data) - HEADER_SIZE} byte(s) "
                                f"after the header): {type(exc).__name__}: {exc}") from None
        left = len(data) - body.tell()
        if left:
            raise CorruptRecord(f"{left} unexpected trailing byte(s) after a {self.name} record (v{found.version}): "
                                f"the record ends at byte {body.tell()} of {len(data)}")
        return record


def _hint(data: bytes) -> str:
    """What a value with the wrong magic looks like, when that is easy to tell."""
    if data[:1] == b"\x00":
        return "; it looks like Schema Registry framing (00 + schema id): set `framing: confluent` in topics.yaml"
    if data[:2] == MAGIC:
        return "; it looks like Avro single-object encoding: set `framing: single-object` in topics.yaml"
    if data.lstrip()[:1] in (b"{", b"["):
        return "; it looks like JSON text, not Avro"
    return ""


def check_header(data: bytes | None, magic: bytes, size: int, framing: str, layout: str) -> None:
    """Raise EmptyValue, TruncatedHeader or BadMagic, each saying what was found, unless `data` starts with a
    whole header of `size` bytes beginning with `magic`."""
    if data is None:
        raise EmptyValue(f"null value (a tombstone): expected a record in {framing} ({layout} + Avro body)")
    if not data:
        raise EmptyValue(f"empty value (0 bytes): expected a record in {framing} ({layout} + Avro body)")
    head = data[:len(magic)]
    if head != magic[:len(head)]:
        raise BadMagic(
            f"not in {framing}: starts with {data[:8].hex()}{'...' if len(data) > 8 else ''} "
            f"({len(data)} byte(s)), expected magic {magic.hex()}{_hint(data)}; "
            "was it produced by `pipeline produce` or a stage?"
        )
    if len(data) < size:
        raise TruncatedHeader(
            f"truncated header: {len(data)} byte(s) ({data.hex()}), the {framing} header needs {size} ({layout})"
        )
