"""Confluent Schema Registry wire format (magic 00 + 4-byte schema id), for shops that run a registry."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from pipeline.avro.schemas import BadMagic, CorruptRecord, SchemaVersion, UnknownSchema, check_record


def registry_client(url: str, extra: dict[str, str] | None = None) -> SchemaRegistryClient:
    """A registry client; `mock://name` gives confluent-kafka's in-memory registry (tests)."""
    return SchemaRegistryClient.new_client({"url": url, **(extra or {})})


class ConfluentCodec:
    """Encodes with the current schema (registered under `<topic>-value`), decodes any registered writer."""

    def __init__(self, client: SchemaRegistryClient, topic: str, schema: SchemaVersion) -> None:
        self.schema = schema
        self.name = schema.name
        schema_str = json.dumps(schema.raw)
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        self._serializer = AvroSerializer(client, schema_str)
        self._deserializer = AvroDeserializer(client, schema_str)

    def encode(self, record: dict[str, Any], validate: bool = True) -> bytes:
        if validate:
            check_record(record, self.schema)
        return self._serializer(record, self._ctx)

    def decode(self, data: bytes) -> dict[str, Any]:
        if not data or len(data) < 5 or data[0] != 0:
            head = (data or b"")[:1].hex() or "empty"
            raise BadMagic(f"not in Schema Registry wire format (starts with {head}, expected 00)")
        try:
            return self._deserializer(data, self._ctx)
        except SchemaRegistryError as exc:
            raise UnknownSchema(f"schema id {int.from_bytes(data[1:5], 'big')} unknown to the registry: {exc}") from None
        except SerializationError as exc:
            raise CorruptRecord(f"corrupt {self.name} record: {exc}") from None
        except Exception as exc:  # fastavro errors on garbled bodies surface unwrapped
            raise CorruptRecord(f"corrupt {self.name} record: {type(exc).__name__}: {exc}") from None
