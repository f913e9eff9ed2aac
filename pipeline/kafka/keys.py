"""The one place a record's Kafka key is built: the topic's key_field as UTF-8 text, so a document's records
share a partition whoever produces them (pipeline produce, bridges, stages, the test kit)."""

from __future__ import annotations

from typing import Any


def record_key(record: dict[str, Any], key_field: str | None, default: bytes | None = None) -> bytes | None:
    """`record[key_field]` as UTF-8 bytes; `default` when the topic has no key field or the record lacks it."""
    value = record.get(key_field) if key_field else None
    return default if value is None else str(value).encode()
