"""`pipeline produce` and `pipeline consume` against the real broker."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, TopicPartition

from pipeline.config import load_topology
from pipeline.kafka import produce as produce_module
from pipeline.kafka.limits import topic_limit
from pipeline.kafka.produce import produce_file
from tests.conftest import PIPELINE, ROOT, run_cli


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
    assert "line 8: record too large: 10,000,1" in err and "over the limit of 1,000,000" in err
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


def _report_counts(stderr: str) -> tuple[int, int, int]:
    """(sent, rejected, not delivered) from the report table."""
    row = re.search(r"│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│", stderr)
    assert row, stderr
    return int(row[1]), int(row[2]), int(row[3])


def _keys_on_topic(topo, topic: str) -> list[bytes]:
    """Every key on the topic, read raw (fast: nothing decoded)."""
    probe = Consumer({"bootstrap.servers": topo.kafka.bootstrap, "group.id": "test-records-keys",
                      "enable.auto.commit": False})
    partitions = topo.topic(topic).partitions
    ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    probe.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    keys, seen = [], {p: 0 for p in range(partitions)}
    deadline = time.monotonic() + 60
    while any(seen[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        for msg in probe.consume(1000, 1.0):
            if not msg.error():
                keys.append(msg.key())
                seen[msg.partition()] = msg.offset() + 1
    probe.close()
    return keys


def _on_topic(topo, topic: str) -> int:
    probe = Consumer({"bootstrap.servers": topo.kafka.bootstrap, "group.id": "test-records-count"})
    total = sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(topo.topic(topic).partitions))
    probe.close()
    return total


def _line(i: int) -> bytes:
    return (json.dumps({"doc_id": f"doc-{i:06d}", "text": f"document number {i}"}) + "\n").encode()


def test_invalid_utf8_mid_file_rejects_that_line_and_sends_the_rest(topology, tmp_path: Path) -> None:
    path, topo = topology
    _apply(path)
    lines = [_line(i) for i in range(500)]
    lines[300] = b'{"doc_id": "bad", "text": "caf\xe9 in Latin-1"}\n'  # line 301: not UTF-8
    lines[420] = b"\xff\xfe\n"  # line 421: not UTF-8, not JSON
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"".join(lines))
    done = run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), str(source))
    assert done.returncode == 1, done.stderr
    err = " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert "line 301: not valid UTF-8: byte 0xe9 at byte 31 of the line" in err
    assert "line 421: not valid UTF-8: byte 0xff at byte 1 of the line" in err
    assert _report_counts(done.stderr) == (498, 2, 0)
    expected = {f"doc-{i:06d}".encode() for i in range(500) if i not in (300, 420)}
    keys = _keys_on_topic(topo, _raw_topic(topo))
    assert len(keys) == len(expected) and set(keys) == expected

    csv_source = tmp_path / "mixed.csv"
    csv_source.write_bytes(b"doc_id,text\nc1,one\nc2,caf\xe9\nc3,three\n")
    done = run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), str(csv_source))
    assert done.returncode == 1
    assert "line 3: not valid UTF-8 in column text" in " ".join(done.stderr.split())
    assert _report_counts(done.stderr) == (2, 1, 0)
    assert set(_keys_on_topic(topo, _raw_topic(topo))) == expected | {b"c1", b"c3"}


@pytest.mark.parametrize("name, content", [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"),
                                           ("header-only.csv", b"doc_id,text\n")])
def test_empty_input_warns_and_exits_0(topology, tmp_path: Path, name: str, content: bytes) -> None:
    path, topo = topology
    _apply(path)
    source = tmp_path / name
    source.write_bytes(content)
    done = run_cli("-c", str(path), "produce", "-t", _raw_topic(topo), str(source))
    assert done.returncode == 0, done.stderr
    assert f"warning: {source} holds no records; nothing was sent" in " ".join(done.stderr.split())
    assert _on_topic(topo, _raw_topic(topo)) == 0


def _start_produce(path: Path, topic: str, source: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([*PIPELINE, "-c", str(path), "produce", "-t", topic, source], cwd=ROOT, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_ctrl_c_while_waiting_for_stdin_flushes_and_reports(topology) -> None:
    path, topo = topology
    _apply(path)
    topic = _raw_topic(topo)
    proc = _start_produce(path, topic, "-", stdin=subprocess.PIPE)
    proc.stdin.write(b"".join(_line(i) for i in range(1000)))
    proc.stdin.flush()  # and kept open: the command blocks reading the next line
    _wait_until(lambda: _on_topic(topo, topic) == 1000, 60, "the 1000 records written so far")
    proc.send_signal(signal.SIGINT)
    proc.wait(60)  # stdin still open: only the signal can end the command
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr.decode()
    err = " ".join(stderr.decode().split())
    assert "interrupted: stopped reading after line 1000" in err and "Traceback" not in err
    assert _report_counts(stderr.decode()) == (1000, 0, 0)
    assert sorted(_keys_on_topic(topo, topic)) == [f"doc-{i:06d}".encode() for i in range(1000)]


def test_ctrl_c_mid_file_sends_exactly_what_it_reports(topology, tmp_path: Path) -> None:
    path, topo = topology
    _apply(path)
    topic = _raw_topic(topo)
    total = 200_000
    source = tmp_path / "big.jsonl"
    source.write_bytes(b"".join(_line(i) for i in range(total)))
    proc = _start_produce(path, topic, str(source))
    _wait_until(lambda: _on_topic(topo, topic) > 0 or proc.poll() is not None, 60, "the first records")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()  # if 0, the whole file was sent before the signal came
    sent, rejected, not_delivered = _report_counts(stderr.decode())
    assert 0 < sent < total and (rejected, not_delivered) == (0, 0)
    read = int(re.search(r"stopped reading after line (\d+)", " ".join(stderr.decode().split()))[1])
    assert read == sent  # every line read before the signal was sent and acknowledged
    keys = _keys_on_topic(topo, topic)
    assert len(keys) == sent and set(keys) == {f"doc-{i:06d}".encode() for i in range(sent)}


def test_unexpected_error_still_flushes_and_reports(topology, tmp_path: Path, monkeypatch) -> None:
    path, topo = topology
    _apply(path)
    topic = _raw_topic(topo)
    real = produce_module.codec_for(topo, topic)

    class Breaks:
        calls = 0

        def encode(self, record: dict, validate: bool = True) -> bytes:
            Breaks.calls += 1
            if Breaks.calls == 40:
                raise RuntimeError("a bug in the middle of the file")
            return real.encode(record, validate)

    monkeypatch.setattr(produce_module, "codec_for", lambda *_: Breaks())
    source = tmp_path / "docs.jsonl"
    source.write_bytes(b"".join(_line(i) for i in range(100)))
    report = produce_file(topo, topic, str(source))
    assert report.error == "RuntimeError: a bug in the middle of the file"
    assert not report.ok and report.last_line == 40
    assert report.sent == 39 and report.not_delivered == 0
    assert sorted(_keys_on_topic(topo, topic)) == [f"doc-{i:06d}".encode() for i in range(39)]


def test_records_over_the_topics_limit_are_rejected_not_sent(topology, tmp_path: Path) -> None:
    path, _ = topology
    raw = yaml.safe_load(path.read_text())
    topic = next(n for n in raw["topics"] if n.endswith("docs.raw"))
    raw["topics"][topic]["config"] = {"max.message.bytes": 4000}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)
    assert topic_limit(topo, topic) == (4000, "topics.yaml")  # not on the broker yet
    _apply(path)
    _wait_until(lambda: topic_limit(topo, topic) == (4000, "the broker"), 30, "the new topic's config")
    lines = [json.dumps({"doc_id": f"s-{i:03d}", "text": "small " * 60}) for i in range(300)]  # ~400 bytes each
    lines[100] = json.dumps({"doc_id": "big", "text": "x" * 5000})
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    done = run_cli("-c", str(path), "produce", "-t", topic, str(source))
    assert done.returncode == 1
    err = " ".join(done.stderr.split())
    assert "line 101: record too large: 5,1" in err
    assert "over the limit of 4,000 bytes for" in err and "topic max.message.bytes 4,000 from the broker" in err
    # Many small records still fit: batches are kept within the topic's limit too.
    assert _report_counts(done.stderr) == (299, 1, 0)
    assert set(_keys_on_topic(topo, topic)) == {f"s-{i:03d}".encode() for i in range(300) if i != 100}
