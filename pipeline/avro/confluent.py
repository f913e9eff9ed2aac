"""Confluent Schema Registry wire format (magic 00 + 4-byte schema id), for shops that run a registry."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError
from fastavro.read import SchemaResolutionError

from pipeline.avro.schemas import CorruptRecord, SchemaVersion, UnknownSchema, WrongType, check_header, check_record

MAGIC = b"\x00"
HEADER_SIZE = 5


def registry_client(url: str, extra: dict[str, str] | None = None) -> SchemaRegistryClient:
    """A registry client; `mock://name` gives confluent-kafka's in-memory registry (tests)."""
    return SchemaRegistryClient.new_client({"url": url, **(extra or {})})


class ConfluentCodec:
    """Encodes with the current schema (registered under `<topic>-value`), decodes any registered writer."""

    def __init__(self, client: SchemaRegistryClient, topic: str, schema: SchemaVersion) -> None:
        self.schema = schema
        self.name = schema.name
        schema_str = json.dumps(schema.raw)
        self._client = client
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        self._serializer = AvroSerializer(client, schema_str)
        self._deserializer = AvroDeserializer(client, schema_str)

    def encode(self, record: dict[str, Any], validate: bool = True) -> bytes:
        if validate:
            check_record(record, self.schema)
        return self._serializer(record, self._ctx)

    def decode(self, data: bytes) -> dict[str, Any]:
        check_header(data, MAGIC, HEADER_SIZE, "Schema Registry wire format", "magic 00 + 4-byte schema id")
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        try:
            return self._deserializer(data, self._ctx)
        except SchemaRegistryError as exc:
            raise UnknownSchema(f"schema id {schema_id} unknown to the registry: {exc}") from None
        except SchemaResolutionError:
            raise WrongType(f"the writer schema (id {schema_id}, {self._writer_name(schema_id)}) cannot be read "
                            f"as {self.name}") from None
        except SerializationError as exc:
            raise CorruptRecord(f"corrupt {self.name} record (schema id {schema_id}, "
                                f"{len(data) - HEADER_SIZE} byte(s) after the header): {exc}") from None
        except Exception as exc:  # fastavro errors on garbled bodies surface unwrapped
            raise CorruptRecord(f"corrupt {self.name} record (schema id {schema_id}, "
                                f"{len(data) - HEADER_SIZE} byte(s) after the header): "
                                f"{type(exc).__name__}: {exc}") from None

    def _writer_name(self, schema_id: int) -> str:
        try:
            raw = json.loads(self._client.get_schema(schema_id).schema_str)
            name, namespace = raw.get("name", "unnamed"), raw.get("namespace")
            return f"{namespace}.{name}" if namespace and "." not in name else name
        except Exception:  # only for the message; the registry was reachable a moment ago
            return "name unknown"
