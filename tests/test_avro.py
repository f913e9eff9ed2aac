"""Codec and schema-evolution tests: no broker needed."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_writer

from pipeline.avro.schemas import MAGIC, BadMagic, CorruptRecord, InvalidRecord, SchemaStore, UnknownSchema
from pipeline.avro.compat import check_store, incompatibilities
from pipeline.errors import ConfigError
from pipeline.avro.confluent import ConfluentCodec, registry_client

ROOT = Path(__file__).resolve().parents[1]
NS = "pipeline.docs."
LINEAGE = {"topic": "docs.raw", "partition": 2, "offset": 41, "ingest_time_ms": 1_700_000_000_123}
PASSAGE = {
    "doc_id": "d1", "passage_index": 0, "passage_count": 2, "text": "Héllo wörld ✓", "content_hash": "ab" * 32,
    "title": "T", "source": None, "metadata": {"label": "maths"}, "lineage": LINEAGE,
}
EMBEDDED = {**PASSAGE, "model_id": "all-MiniLM-L6-v2", "dim": 3, "vector": struct.pack("<3f", 0.5, -0.25, 1.0)}
RECORDS = {
    "RawDocument": {"doc_id": "d1", "text": "<p>x</p>", "title": None, "source": "s", "metadata": {"a": "b"}},
    "Passage": PASSAGE,
    "EmbeddedPassage": EMBEDDED,
    "ClassifiedPassage": {**EMBEDDED, "label": "maths", "score": 0.75, "scores": {"maths": 0.75, "text": 0.25},
                          "classifier_id": "zero-shot:abc"},
}


@pytest.fixture(scope="module")
def store() -> SchemaStore:
    return SchemaStore.load(ROOT / "schemas")


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip_each_record_type(store: SchemaStore, name: str) -> None:
    codec = store.codec(NS + name)
    data = codec.encode(RECORDS[name])
    assert data[:2] == MAGIC
    assert data[2:10] == store.current(NS + name).fingerprint
    assert codec.decode(data) == RECORDS[name]


def test_fingerprint_matches_avro_spec(store: SchemaStore) -> None:
    # CRC-64-AVRO of the schema "null" is 0x63dd24e7cc258f8a (Avro spec test vector), written little-endian.
    from pipeline.avro.schemas import _fingerprint

    assert _fingerprint("null") == (0x63DD24E7CC258F8A).to_bytes(8, "little")


def _write_with(version, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(MAGIC + version.fingerprint)
    schemaless_writer(out, version.parsed, record)
    return out.getvalue()


def test_old_version_is_read_into_current(store: SchemaStore) -> None:
    v1 = store.versions[NS + "RawDocument"][0]
    assert v1.version == 1
    data = _write_with(v1, {"doc_id": "old", "text": "written by v1", "title": "t"})
    decoded = store.codec(NS + "RawDocument").decode(data)
    assert decoded == {"doc_id": "old", "text": "written by v1", "title": "t", "source": None, "metadata": {}}


def test_bad_magic(store: SchemaStore) -> None:
    with pytest.raises(BadMagic, match="expected c301"):
        store.codec(NS + "Passage").decode(b"\x00\x01" + b"\x00" * 20)


def test_short_input_is_bad_magic(store: SchemaStore) -> None:
    with pytest.raises(BadMagic):
        store.codec(NS + "Passage").decode(b"\xc3\x01\x00")


def test_unknown_fingerprint(store: SchemaStore) -> None:
    with pytest.raises(UnknownSchema, match="unknown schema fingerprint 0102030405060708"):
        store.codec(NS + "Passage").decode(MAGIC + bytes(range(1, 9)) + b"\x02")


def test_record_of_another_type_is_refused(store: SchemaStore) -> None:
    data = store.codec(NS + "RawDocument").encode(RECORDS["RawDocument"])
    with pytest.raises(UnknownSchema, match="this topic carries pipeline.docs.Passage"):
        store.codec(NS + "Passage").decode(data)


def test_truncated_and_trailing_bytes(store: SchemaStore) -> None:
    codec = store.codec(NS + "Passage")
    data = codec.encode(PASSAGE)
    with pytest.raises(CorruptRecord):
        codec.decode(data[:-5])
    with pytest.raises(CorruptRecord, match="trailing"):
        codec.decode(data + b"\x00")


def test_invalid_record_names_the_field(store: SchemaStore) -> None:
    with pytest.raises(InvalidRecord, match=r"RawDocument\.doc_id: got 7, expected string"):
        store.codec(NS + "RawDocument").encode({"doc_id": 7, "text": "x"})


def test_confluent_wire_format_with_mock_registry(store: SchemaStore) -> None:
    client = registry_client("mock://tests")
    old = ConfluentCodec(client, "docs.raw", store.versions[NS + "RawDocument"][0])
    new = ConfluentCodec(client, "docs.raw", store.current(NS + "RawDocument"))
    data = new.encode(RECORDS["RawDocument"])
    assert data[0] == 0
    assert new.decode(data) == RECORDS["RawDocument"]
    evolved = new.decode(old.encode({"doc_id": "o", "text": "v1", "title": None}))
    assert evolved == {"doc_id": "o", "text": "v1", "title": None, "source": None, "metadata": {}}
    with pytest.raises(BadMagic):
        new.decode(b"\xc3\x01abcdef")
    with pytest.raises(UnknownSchema):
        new.decode(b"\x00\x00\x00\x03\xe7\x02a\x02b")


def _record(fields: list[dict]) -> dict:
    return parse_schema({"type": "record", "name": "R", "namespace": "t", "fields": fields}, named_schemas={})


def test_compat_accepts_added_field_with_default_and_promotion() -> None:
    old = _record([{"name": "a", "type": "int"}])
    new = _record([{"name": "a", "type": "long"}, {"name": "b", "type": ["null", "string"], "default": None}])
    assert incompatibilities(new, old) == []


@pytest.mark.parametrize(
    "old_fields, new_fields, expected",
    [
        ([{"name": "a", "type": "int"}], [{"name": "a", "type": "int"}, {"name": "b", "type": "string"}],
         "R.b: new field has no default"),
        ([{"name": "a", "type": "string"}], [{"name": "a", "type": "int"}],
         "R.a: writer type string cannot be read as int"),
        ([{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}}],
         [{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X"]}}],
         "lacks writer symbol(s) ['Y']"),
        ([{"name": "m", "type": {"type": "map", "values": "string"}}],
         [{"name": "m", "type": {"type": "map", "values": "int"}}],
         "R.m{}: writer type string cannot be read as int"),
        ([{"name": "u", "type": ["null", "string", "int"]}], [{"name": "u", "type": ["null", "string"]}],
         "R.u: writer type int matches no branch"),
    ],
)
def test_compat_reports_each_breaking_change(old_fields, new_fields, expected) -> None:
    problems = incompatibilities(_record(new_fields), _record(old_fields))
    assert any(expected in p for p in problems), problems


def test_check_store_is_transitive_and_precise(tmp_path: Path) -> None:
    base = {"type": "record", "name": "Doc", "namespace": "t"}
    (tmp_path / "doc.v1.avsc").write_text(json.dumps({**base, "fields": [{"name": "a", "type": "string"}]}))
    (tmp_path / "doc.v2.avsc").write_text(json.dumps({**base, "fields": [
        {"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0}]}))
    (tmp_path / "doc.v3.avsc").write_text(json.dumps({**base, "fields": [
        {"name": "b", "type": "int", "default": 0}, {"name": "c", "type": "string"}]}))
    problems = check_store(SchemaStore.load(tmp_path))
    # v3 is checked against v1 and v2, not only against its predecessor.
    assert len(problems) == 2
    assert all("t.Doc v3 (doc.v3.avsc) cannot read" in p and "Doc.c: new field has no default" in p for p in problems)


def test_repo_schemas_are_compatible(store: SchemaStore) -> None:
    assert check_store(store) == []


def test_bad_schema_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.v1.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}')
    with pytest.raises(ConfigError, match=r"x\.v1\.avsc: not a valid Avro schema"):
        SchemaStore.load(tmp_path)
    (tmp_path / "x.v1.avsc").unlink()
    (tmp_path / "x.avsc").write_text('{"type": "record", "name": "X", "fields": []}')
    with pytest.raises(ConfigError, match="must be named <name>.v<N>.avsc"):
        SchemaStore.load(tmp_path)
