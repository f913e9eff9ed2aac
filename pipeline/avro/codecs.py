"""Which codec a topic's values use, chosen from the topology's framing."""

from __future__ import annotations

from functools import lru_cache

from pipeline.avro.schemas import Codec, SchemaStore
from pipeline.config import Topology
from pipeline.errors import ConfigError


@lru_cache(maxsize=8)
def _store(folder: str) -> SchemaStore:
    return SchemaStore.load(folder)


def schema_store(topology: Topology) -> SchemaStore:
    return _store(str(topology.schemas_dir))


def codec_for(topology: Topology, topic: str) -> Codec:
    """The value codec of a declared topic; ConfigError when the topic carries raw bytes."""
    spec = topology.topic(topic)
    if spec.value_schema is None:
        raise ConfigError(f"topic '{topic}' has no value_schema in topics.yaml (it carries raw bytes)")
    store = schema_store(topology)
    if topology.framing == "single-object":
        return store.codec(spec.value_schema)
    from pipeline.avro.confluent import ConfluentCodec, registry_client

    assert topology.schema_registry is not None  # checked when the topology was loaded
    client = registry_client(topology.schema_registry.url)
    return ConfluentCodec(client, topic, store.current(spec.value_schema))
