"""Codec and schema-evolution tests: no broker needed."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_writer

from pipeline.avro.schemas import (
    MAGIC,
    AvroError,
    BadMagic,
    CorruptRecord,
    EmptyValue,
    InvalidRecord,
    SchemaStore,
    TruncatedHeader,
    UnknownSchema,
    WrongType,
)
from pipeline.avro.compat import check_store, incompatibilities
from pipeline.errors import ConfigError
from pipeline.avro.confluent import ConfluentCodec, registry_client

ROOT = Path(__file__).resolve().parents[1]
NS = "pipeline.docs."
LINEAGE = {"topic": "docs.raw", "partition": 2, "offset": 41, "ingest_time_ms": 1_700_000_000_123}
PASSAGE = {
    "doc_id": "d1", "passage_index": 0, "passage_count": 2, "text": "Héllo wörld ✓", "content_hash": "ab" * 32,
    "title": "T", "source": None, "metadata": {"label": "maths"}, "lineage": LINEAGE, "deleted": False,
}
TOKENS = {"token_ids": struct.pack("<3I", 101, 7592, 102), "tokenizer_id": "0123456789abcdef"}
EMBEDDED = {**PASSAGE, "model_id": "all-MiniLM-L6-v2", "dim": 3, "vector": struct.pack("<3f", 0.5, -0.25, 1.0)}
REASONS = {EmptyValue: "empty-value", TruncatedHeader: "truncated-header", BadMagic: "bad-magic",
           UnknownSchema: "unknown-schema", WrongType: "wrong-type", CorruptRecord: "corrupt-record"}
RECORDS = {
    "RawDocument": {"doc_id": "d1", "text": "<p>x</p>", "title": None, "source": "s", "metadata": {"a": "b"}},
    "Passage": {**PASSAGE, **TOKENS},
    "EmbeddedPassage": EMBEDDED,
    "ClassifiedPassage": {**EMBEDDED, "label": "maths", "score": 0.75, "scores": {"maths": 0.75, "text": 0.25},
                          "classifier_id": "zero-shot:abc"},
}


@pytest.fixture(scope="module")
def store() -> SchemaStore:
    return SchemaStore.load(ROOT / "schemas")


PASSAGE_BYTES = SchemaStore.load(ROOT / "schemas").codec(NS + "Passage").encode(PASSAGE)


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


# (value built from a valid Passage, reason, class, phrases its message must hold): every reason decode gives.
SINGLE_OBJECT_FAULTS = [
    ("null", lambda v: None, EmptyValue, ["null value (a tombstone)", "c301 + 8-byte schema fingerprint"]),
    ("empty", lambda v: b"", EmptyValue, ["empty value (0 bytes)"]),
    ("magic only", lambda v: b"\xc3\x01", TruncatedHeader,
     ["truncated header: 2 byte(s) (c301)", "header needs 10"]),
    ("first magic byte", lambda v: b"\xc3", TruncatedHeader, ["truncated header: 1 byte(s) (c3)", "needs 10"]),
    ("half a fingerprint", lambda v: v[:6], TruncatedHeader, ["truncated header: 6 byte(s)", "needs 10"]),
    ("wrong magic", lambda v: b"\xc3\x02" + v[2:], BadMagic,
     ["starts with c302", f"({len(PASSAGE_BYTES)} byte(s))", "expected magic c301"]),
    ("one other byte", lambda v: b"\x07", BadMagic, ["starts with 07 (1 byte(s))", "expected magic c301"]),
    ("JSON", lambda v: b'{"doc_id": "d1"}', BadMagic, ["starts with 7b22646f635f6964...", "looks like JSON text"]),
    ("Confluent framing", lambda v: b"\x00\x00\x00\x00\x01\x02a", BadMagic,
     ["starts with 0000000001026", "set `framing: confluent`"]),
    ("unknown fingerprint", lambda v: MAGIC + bytes(range(1, 9)) + v[10:], UnknownSchema,
     ["unknown schema fingerprint 0102030405060708", "add the writer's .avsc"]),
    ("body cut short", lambda v: v[:-5], CorruptRecord,
     ["corrupt pipeline.docs.Passage body (v3,", f"{len(PASSAGE_BYTES) - 15} byte(s) after the header"]),
    ("header only", lambda v: v[:10], CorruptRecord, ["corrupt pipeline.docs.Passage body", "0 byte(s) after"]),
    ("trailing bytes", lambda v: v + b"\x00\x01", CorruptRecord,
     ["2 unexpected trailing byte(s) after a pipeline.docs.Passage record",
      f"ends at byte {len(PASSAGE_BYTES)} of {len(PASSAGE_BYTES) + 2}"]),
]


@pytest.mark.parametrize("fault, corrupt, error, phrases", SINGLE_OBJECT_FAULTS,
                         ids=[f[0] for f in SINGLE_OBJECT_FAULTS])
def test_each_single_object_decode_reason(store: SchemaStore, fault, corrupt, error, phrases) -> None:
    with pytest.raises(AvroError) as caught:
        store.codec(NS + "Passage").decode(corrupt(PASSAGE_BYTES))
    assert type(caught.value) is error
    assert caught.value.reason == REASONS[error]
    for phrase in phrases:
        assert phrase in str(caught.value), str(caught.value)


def test_the_two_byte_magic_alone_is_a_truncated_header_not_bad_magic(store: SchemaStore) -> None:
    # The case from issue 11: C3 01 used to read "starts with c301, expected c301".
    with pytest.raises(TruncatedHeader) as caught:
        store.codec(NS + "Passage").decode(b"\xc3\x01")
    assert caught.value.reason == "truncated-header"
    assert "expected" not in str(caught.value)


def test_record_of_another_type_is_refused(store: SchemaStore) -> None:
    data = store.codec(NS + "RawDocument").encode(RECORDS["RawDocument"])
    with pytest.raises(WrongType) as caught:
        store.codec(NS + "Passage").decode(data)
    assert caught.value.reason == "wrong-type"
    assert "record is a pipeline.docs.RawDocument (v2, fingerprint" in str(caught.value)
    assert "this topic carries pipeline.docs.Passage" in str(caught.value)


def test_invalid_utf8_in_a_string_is_a_corrupt_record(store: SchemaStore) -> None:
    codec = store.codec(NS + "RawDocument")
    data = codec.encode({"doc_id": "d", "text": "XXXX"}).replace(b"XXXX", b"\xff\xfe\xfd\xfc")
    with pytest.raises(CorruptRecord, match="corrupt pipeline.docs.RawDocument body .*UnicodeDecodeError"):
        codec.decode(data)


def test_invalid_record_names_the_field(store: SchemaStore) -> None:
    with pytest.raises(InvalidRecord, match=r"RawDocument\.doc_id: got 7, expected string") as caught:
        store.codec(NS + "RawDocument").encode({"doc_id": 7, "text": "x"})
    assert caught.value.reason == "invalid-record"
    with pytest.raises(InvalidRecord, match=r"RawDocument\.text: got None, expected string"):  # a field missing
        store.codec(NS + "RawDocument").encode({"doc_id": "x"})


def test_confluent_wire_format_with_mock_registry(store: SchemaStore) -> None:
    client = registry_client("mock://tests")
    old = ConfluentCodec(client, "docs.raw", store.versions[NS + "RawDocument"][0])
    new = ConfluentCodec(client, "docs.raw", store.current(NS + "RawDocument"))
    data = new.encode(RECORDS["RawDocument"])
    assert data[0] == 0
    assert new.decode(data) == RECORDS["RawDocument"]
    evolved = new.decode(old.encode({"doc_id": "o", "text": "v1", "title": None}))
    assert evolved == {"doc_id": "o", "text": "v1", "title": None, "source": None, "metadata": {}}



CONFLUENT_FAULTS = [
    ("null", lambda v: None, EmptyValue, ["null value (a tombstone)", "magic 00 + 4-byte schema id"]),
    ("empty", lambda v: b"", EmptyValue, ["empty value (0 bytes)"]),
    ("magic only", lambda v: b"\x00", TruncatedHeader, ["truncated header: 1 byte(s) (00)", "header needs 5"]),
    ("half an id", lambda v: v[:3], TruncatedHeader, ["truncated header: 3 byte(s)", "needs 5"]),
    ("single-object value", lambda v: b"\xc3\x01abcdef", BadMagic,
     ["starts with c301616263646566 (8 byte(s))", "expected magic 00", "set `framing: single-object`"]),
    ("unknown schema id", lambda v: b"\x00\x00\x00\x03\xe7\x02a\x02b", UnknownSchema,
     ["schema id 999 unknown to the registry"]),
    ("body cut short", lambda v: v[:-2], CorruptRecord, ["corrupt pipeline.docs.RawDocument record (schema id"]),
    ("record of another type", None, WrongType,
     ["(id", "pipeline.docs.Passage) cannot be read as pipeline.docs.RawDocument"]),
]


@pytest.mark.parametrize("fault, corrupt, error, phrases", CONFLUENT_FAULTS, ids=[f[0] for f in CONFLUENT_FAULTS])
def test_each_confluent_decode_reason(store: SchemaStore, fault, corrupt, error, phrases) -> None:
    client = registry_client("mock://reasons")
    codec = ConfluentCodec(client, "docs.raw", store.current(NS + "RawDocument"))
    if corrupt is None:
        data = ConfluentCodec(client, "docs.passages", store.current(NS + "Passage")).encode(PASSAGE)
    else:
        data = corrupt(codec.encode(RECORDS["RawDocument"]))
    with pytest.raises(AvroError) as caught:
        codec.decode(data)
    assert type(caught.value) is error
    assert caught.value.reason == REASONS[error]
    for phrase in phrases:
        assert phrase in str(caught.value), str(caught.value)


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
