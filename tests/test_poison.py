"""A poison corpus mixed into good traffic: every bad record ends in a dead-letter topic with the right reason,
every good one is stored, and no stage crashes or stalls."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from fastavro import schemaless_writer

from pipeline.avro.schemas import MAGIC
from pipeline.kafka.clients import producer
from pipeline.config import load_topology
from pipeline.kafka.dlq import dead_letters
from pipeline.kafka.offsets import stage_lag
from pipeline.avro.codecs import codec_for, schema_store
from pipeline.runtime.stage import Incoming, load_stage
from stages.store import point_id
from tests.conftest import lag, run_cli, start_stage, stop_all, stored_points, wait_for


def _v1(topo, record: dict) -> bytes:
    old = schema_store(topo).versions["pipeline.docs.RawDocument"][0]
    out = io.BytesIO()
    out.write(MAGIC + old.fingerprint)
    schemaless_writer(out, old.parsed, record)
    return out.getvalue()


def _corpus(topo, raw_topic: str) -> tuple[list[tuple[str, bytes | None, bytes | None]], list[dict]]:
    """(expected reason, key, value) for each bad record, and the good documents."""
    codec = codec_for(topo, raw_topic)
    passage = codec_for(topo, topo.stages["preprocess"].output)
    enc = lambda doc_id, text, **kw: codec.encode({"doc_id": doc_id, "text": text, **kw})  # noqa: E731
    valid = enc("p-utf8", "XXXX")
    bad_utf8 = valid.replace(b"XXXX", b"\xff\xfe\xfd\xfc")
    wrong_type = passage.encode({"doc_id": "x", "passage_index": 0, "passage_count": 1, "text": "t",
                                 "content_hash": "h", "lineage": {"topic": "t", "partition": 0, "offset": 0,
                                                                  "ingest_time_ms": 0}})
    bad = [
        ("bad-magic", b"k1", bytes(range(256))),                        # random bytes
        ("empty-value", b"k2", b""),                                     # empty value
        ("tombstone-without-key", None, None),                           # tombstone (keyed: a delete)
        ("bad-magic", b"k4", b"\xc3\x02" + valid[2:]),                   # wrong magic
        ("bad-magic", b"k5", b'{"doc_id": "json", "text": "not avro"}'),  # JSON instead of Avro
        ("unknown-schema", b"k6", MAGIC + b"\x01" * 8 + valid[10:]),     # unknown fingerprint
        ("wrong-type", b"k7", wrong_type),                               # a record of another type
        ("corrupt-record", b"k8", valid[:-3]),                           # truncated Avro
        ("corrupt-record", b"k9", valid + b"\x00\x01"),                  # trailing bytes
        ("corrupt-record", b"k10", bad_utf8),                            # invalid UTF-8 in a string field
        ("truncated-header", b"k12", MAGIC),                             # the magic and nothing else
        ("corrupt-record", b"k11", MAGIC + valid[2:10] + b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"),
        ("empty-text", b"e1", enc("e1", "")),                            # schema-valid, empty text
        ("empty-text", b"e2", enc("e2", " \t\n\r  \u00a0 ")),            # only whitespace
        ("empty-text", b"e3", enc("e3", "<p><br/></p><div>  </div>")),   # only markup
        ("empty-text", b"e4", enc("e4", "\x00\x01\x02\x07\x1b")),        # only control characters
        ("empty-text", b"e5", enc("e5", "<script>var x = 1;</script><style>p {}</style>")),
        ("too-large", b"big", enc("big", "word " * 60_000)),             # over the configured size limit
    ]
    good = [
        {"doc_id": "g-nested", "text": "<div>" * 3000 + "Deeply nested but real text." + "</div>" * 3000},
        {"doc_id": "g-emoji", "text": "🎉🚀🔥 ✨👩‍👩‍👧‍👦"},
        {"doc_id": "g-rtl", "text": "שלום עולם. مرحبا بالعالم، هذه جملة."},
        {"doc_id": "g-combining", "text": "Cafe\u0301 na\u0308ive re\u0301sume\u0301."},
        {"doc_id": "g-entities", "text": "Fish &amp; chips &lt;b&gt; are &quot;good&quot;."},
        {"doc_id": "g-controls", "text": "Real\x00 words\x07 between\x1b control characters."},
        {"doc_id": "g-one-long-word", "text": "x" * 6000},
        {"doc_id": "g-script-around", "text": "<script>alert(1)</script>Visible text stays."},
        {"doc_id": "g-dup", "text": "The same document sent twice."},
        {"doc_id": "g-unicode-id-✓", "text": "A document whose id is not ASCII."},
        {"doc_id": "g-metadata", "text": "With metadata.", "metadata": {"a": "b", "ünï": "cödé"}},
    ]
    return bad, good


def test_poison_corpus(topology, tmp_path: Path) -> None:
    path, _ = topology
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["preprocess"]["options"]["max_chars"] = 100_000
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    raw_topic = topo.stages["preprocess"].input
    bad, good = _corpus(topo, raw_topic)
    assert len(bad) + len(good) >= 25

    codec = codec_for(topo, raw_topic)
    kafka = producer(topo, **{"message.max.bytes": 2_000_000})
    keys = [b"\xff\x00binary-key", None, "ключ".encode()]  # keys that are not ASCII strings, or none
    for i, doc in enumerate(good):
        kafka.produce(raw_topic, key=keys[i % 3], value=codec.encode(doc))
    for _, key, value in bad:
        kafka.produce(raw_topic, key=key, value=value)
    kafka.produce(raw_topic, key=b"g-dup", value=codec.encode(good[8]))          # duplicated document id
    kafka.produce(raw_topic, key=b"g-v1", value=_v1(topo, {"doc_id": "g-v1", "text": "Written by schema v1.",
                                                           "title": None}))
    assert kafka.flush(30) == 0
    good.append({"doc_id": "g-v1", "text": "Written by schema v1."})

    pre = load_stage(topo, "preprocess")
    pre.setup()
    full = [{"title": None, "source": None, "metadata": {}, **d} for d in good]
    expected = {point_id(p["doc_id"], p["passage_index"])
                for r in pre.process([Incoming(d, None, "t", 0, 0, 0) for d in full]) for p in r}

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    try:
        wait_for(lambda: lag(topo) == 0 and sum(r.committed or 0 for r in stage_lag(topo, "store")) > 0,
                 300, "every stage to drain", procs, logs)
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} crashed"
    finally:
        stop_all(procs)

    letters = dead_letters(topo, "preprocess")
    by_key = {d.key: d.reason for d in letters}
    for reason, key, _ in bad:
        assert by_key.get(key) == reason, (key, by_key.get(key), reason)
    assert len(letters) == len(bad)
    for later in ("embed", "classify", "store"):
        assert dead_letters(topo, later) == []
    assert set(stored_points(topo.stages["store"].options["path"])) == expected
