"""`pipeline produce` and `pipeline consume` against the real broker."""

from __future__ import annotations

import json
import random
from pathlib import Path

from aiokafka.partitioner import murmur2

from tests.conftest import run_cli


def _apply(path: Path) -> None:
    done = run_cli("-c", str(path), "topics", "apply")
    assert done.returncode == 0, done.stderr


def _raw_topic(topo) -> str:
    return next(n for n in topo.topics if n.endswith("docs.raw"))


def _documents(count: int) -> list[dict]:
    rng = random.Random(3)
    words = ["kafka", "avro", "vector", "naïve", "日本語", "emoji ✓", "<b>bold</b>", "tab\tand\nnewline"]
    return [
        {
            "doc_id": f"doc-{i}",
            "text": " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))),
            "title": None if i % 3 else f"Title {i}",
            "source": "tests",
            "metadata": {"i": str(i), "label": rng.choice(["a", "b"])},
        }
        for i in range(count)
    ]


def _consume_all(path: Path, topic: str, *extra: str) -> list[dict]:
    done = run_cli("-c", str(path), "consume", topic, "--from-beginning", "--exit-at-end", *extra)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_produce_consume_round_trip_is_exact(topology, tmp_path: Path) -> None:
    path, topo = topology
    _apply(path)
    docs = _documents(300)
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    produced = run_cli("-c", str(path), "produce", "--topic", _raw_topic(topo), str(source))
    assert produced.returncode == 0, produced.stderr
    assert "300" in produced.stderr
    consumed = _consume_all(path, _raw_topic(topo))
    assert sorted(consumed, key=lambda d: d["doc_id"]) == sorted(docs, key=lambda d: d["doc_id"])


def test_keys_land_where_faust_and_java_put_them(topology, tmp_path: Path) -> None:
    path, topo = topology
    _apply(path)
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in _documents(60)))
    assert run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), str(source)).returncode == 0
    consumed = _consume_all(path, _raw_topic(topo), "--meta")
    partitions = topo.topic(_raw_topic(topo)).partitions
    assert len(consumed) == 60
    assert len({c["partition"] for c in consumed}) == partitions
    for c in consumed:
        assert c["key"] == c["value"]["doc_id"]
        assert c["partition"] == (murmur2(c["key"].encode()) & 0x7FFFFFFF) % partitions


def test_bad_lines_are_reported_and_the_rest_is_sent(topology, tmp_path: Path) -> None:
    path, topo = topology
    _apply(path)
    lines = [
        json.dumps({"doc_id": "good-1", "text": "one"}),
        "{not json",
        json.dumps({"doc_id": 12, "text": "id must be a string"}),
        json.dumps({"doc_id": "good-2", "text": "two"}),
        json.dumps({"doc_id": "x", "text": "t", "colour": "red"}),
        json.dumps({"text": "no id"}),
        json.dumps({"doc_id": "good-3", "text": "three"}),
        json.dumps({"doc_id": "huge", "text": "x" * 10_000_000}),  # 10 MB: over Kafka's 1 MB message limit
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n")
    done = run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), str(source))
    assert done.returncode == 1
    err = " ".join(done.stderr.split())
    assert "line 2: invalid JSON" in err
    assert "line 3: not a valid pipeline.docs.RawDocument: pipeline.docs.RawDocument.doc_id: got 12" in err
    assert "line 5: unknown field(s) colour" in err
    assert "line 6:" in err
    assert "line 8: not accepted by the producer" in err and "too large" in err.lower()
    consumed = _consume_all(path, _raw_topic(topo))
    assert sorted(d["doc_id"] for d in consumed) == ["good-1", "good-2", "good-3"]

    strict = run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), "--strict", str(source))
    assert strict.returncode == 1
    assert "line 3" not in strict.stderr  # stopped at line 2
    assert len(_consume_all(path, _raw_topic(topo))) == 4  # only good-1 was sent again


def test_csv_and_stdin(topology, tmp_path: Path) -> None:
    path, topo = topology
    _apply(path)
    source = tmp_path / "docs.csv"
    source.write_text('doc_id,text,title,metadata.label\nc1,"hello, world",,maths\nc2,second,T2,\n')
    assert run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), str(source)).returncode == 0
    piped = run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), "-",
                    input=json.dumps({"doc_id": "s1", "text": "from stdin"}) + "\n")
    assert piped.returncode == 0, piped.stderr
    by_id = {d["doc_id"]: d for d in _consume_all(path, _raw_topic(topo))}
    assert by_id["c1"] == {"doc_id": "c1", "text": "hello, world", "title": None, "source": None,
                           "metadata": {"label": "maths"}}
    assert by_id["c2"]["title"] == "T2" and by_id["c2"]["metadata"] == {}
    assert by_id["s1"]["text"] == "from stdin"


def test_consume_max_and_undecodable_records(topology, tmp_path: Path) -> None:
    path, topo = topology
    _apply(path)
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in _documents(10)))
    assert run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), str(source)).returncode == 0
    three = run_cli("-c", str(path), "consume", _raw_topic(topo), "--from-beginning", "--max", "3")
    assert three.returncode == 0
    assert len(three.stdout.splitlines()) == 3

    from pipeline.kafka.clients import producer

    kafka = producer(topo)
    kafka.produce(_raw_topic(topo), key=b"k", value=b"not avro at all")
    kafka.flush(10)
    everything = run_cli("-c", str(path), "consume", _raw_topic(topo), "--from-beginning", "-e")
    assert len(everything.stdout.splitlines()) == 10
    assert "bad-magic" in everything.stderr and "1 record(s) could not be decoded" in everything.stderr
