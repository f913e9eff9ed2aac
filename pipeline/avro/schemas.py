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


class BadMagic(AvroError):
    reason = "bad-magic"


class UnknownSchema(AvroError):
    reason = "unknown-schema"


class CorruptRecord(AvroError):
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
        if data is None or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            head = (data or b"")[:2].hex() or "empty"
            raise BadMagic(
                f"not Avro single-object encoded (starts with {head}, expected c301); "
                "was it produced by `pipeline produce` or a stage?"
            )
        found = self.store.by_fingerprint.get(data[2:HEADER_SIZE])
        if found is None:
            raise UnknownSchema(
                f"unknown schema fingerprint {data[2:HEADER_SIZE].hex()}: add the writer's "
                f".avsc to {self.store.folder}"
            )
        if found.name != self.name:
            raise UnknownSchema(f"record is a {found.name}, this topic carries {self.name}")
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        reader = None if found is self.writer else self.writer.parsed
        try:
            record = schemaless_reader(body, found.parsed, reader)
        except Exception as exc:  # truncated or garbled bodies fail in many ways inside fastavro
            raise CorruptRecord(f"corrupt {self.name} body (v{found.version}): {type(exc).__name__}: {exc}") from None
        left = len(data) - body.tell()
        if left:
            raise CorruptRecord(f"{left} unexpected trailing byte(s) after a {self.name} record")
        return record
