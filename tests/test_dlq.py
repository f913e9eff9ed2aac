"""Dead letters on the real broker: original bytes kept, reasons in headers, `dlq show`, byte-exact redrive; a
bridge's dead letters shown apart from the others' in a shared topic, and redriven through its conversion."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition

from pipeline.avro.codecs import codec_for
from pipeline.bridges.base import Message, SourceBridge
from pipeline.kafka.clients import producer
from pipeline.config import bridge_stage, load_topology
from pipeline.dev import sandbox
from pipeline.kafka.dlq import REDRIVEN_FROM, dead_letters, error_headers, redrive
from tests.conftest import ROOT, lag, run_cli, start_stage, wait_for, write_topology


def _run_preprocess_until_idle(path: Path, topo, logs: Path, name: str) -> None:
    procs = {name: start_stage(path, "preprocess", logs, name=name)}
    try:
        wait_for(lambda: lag(topo, ["preprocess"]) == 0, 180, "preprocess", procs, logs)
    finally:
        procs[name].send_signal(signal.SIGTERM)
        assert procs[name].wait(60) == 0


def _record_at(topo, topic: str, partition: int, offset: int):
    probe = Consumer({"bootstrap.servers": topo.kafka.bootstrap, "group.id": "test-dlq-read"})
    probe.assign([TopicPartition(topic, partition, offset)])
    msg = probe.poll(10)
    probe.close()
    assert msg is not None and not msg.error()
    return msg


def test_dead_letters_show_and_redrive(topology, tmp_path: Path) -> None:
    path, _ = topology
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["preprocess"]["options"]["max_chars"] = 300
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    source_topic = topo.stages["preprocess"].input
    docs = [{"doc_id": "ok-1", "text": "A fine document."}, {"doc_id": "blank", "text": " \t\n "},
            {"doc_id": "long", "text": "Long sentence here. " * 40}, {"doc_id": "ok-2", "text": "Another one."}]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert run_cli("-c", str(path), "produce", "-t", source_topic, str(source)).returncode == 0
    kafka = producer(topo)
    kafka.produce(source_topic, key=b"\xff\xfe", value=b"\x00garbage\x01")
    kafka.flush(10)

    logs = tmp_path / "logs"
    logs.mkdir()
    _run_preprocess_until_idle(path, topo, logs, "preprocess")
    letters = dead_letters(topo, "preprocess")
    assert sorted(d.reason for d in letters) == ["bad-magic", "empty-text", "too-large"]
    for d in letters:  # original bytes untouched, the source position in the headers
        original = _record_at(topo, d.error["topic"], int(d.error["partition"]), int(d.error["offset"]))
        assert (d.key, d.value) == (original.key(), original.value())
        assert d.error["stage"] == "preprocess" and d.error["message"]
    shown = run_cli("-c", str(path), "dlq", "show", "preprocess")
    assert shown.returncode == 0
    table = " ".join(shown.stderr.split())
    assert "3 dead letter(s)" in table and "too-large │ 1" in table and "empty-text │ 1" in table

    # Fix the cause (raise the size limit), then redrive only the too-large letter.
    assert "1 dead letter(s) would go" in run_cli("-c", str(path), "dlq", "redrive", "preprocess",
                                                 "--where", "too-large", "--dry-run").stderr
    redriven = run_cli("-c", str(path), "dlq", "redrive", "preprocess", "--where", "too-large")
    assert redriven.returncode == 0 and "redrove 1 record(s)" in redriven.stderr, redriven.stderr
    raw["stages"]["preprocess"]["options"]["max_chars"] = 1_000_000
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    _run_preprocess_until_idle(path, topo, logs, "preprocess-fixed")
    out = run_cli("-c", str(path), "consume", topo.stages["preprocess"].output, "--from-beginning", "-e", "--meta")
    passages = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted({p["value"]["doc_id"] for p in passages}) == ["long", "ok-1", "ok-2"]
    long = [p for p in passages if p["value"]["doc_id"] == "long"]
    assert {p["value"]["passage_index"] for p in long} == set(range(long[0]["value"]["passage_count"]))
    assert len(dead_letters(topo, "preprocess")) == 3  # nothing new failed
    redriven_copy = [d for d in dead_letters(topo, "preprocess") if d.reason == "too-large"][0]
    back = _record_at(topo, source_topic, long[0]["value"]["lineage"]["partition"],
                      long[0]["value"]["lineage"]["offset"])
    assert back.value() == redriven_copy.value and back.key() == redriven_copy.key  # byte-exact
    assert dict(back.headers())[REDRIVEN_FROM].startswith(topo.stages["preprocess"].dead_letter.encode())


def test_redrive_more_letters_than_the_producers_queue_holds(topology) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    spec = topo.stages["embed"]
    kafka = producer(topo)
    letters = [(f"k-{i}".encode(), bytes([i % 256]) * (i % 50) + f"v-{i}".encode()) for i in range(300)]
    letters.append((None, None))  # a tombstone dead-lettered as empty-value comes back as a tombstone
    for n, (key, value) in enumerate(letters):
        kafka.produce(spec.dead_letter, key=key, value=value,
                      headers=error_headers("embed", "bad-magic", "BadMagic", "test", spec.input, 0, n))
    assert kafka.flush(30) == 0

    found = dead_letters(topo, "embed")
    assert len(found) == len(letters)
    # The producer's local queue holds 20 messages here: without back-pressure the 21st produce() fails.
    assert redrive(topo, "embed", found, **{"queue.buffering.max.messages": 20}) == len(letters)
    probe = Consumer({"bootstrap.servers": topo.kafka.bootstrap, "group.id": "test-redrive-read"})
    probe.assign([TopicPartition(spec.input, p, 0) for p in range(topo.topic(spec.input).partitions)])
    back = []
    while len(back) < len(letters):
        batch = probe.consume(500, 10)
        assert batch, f"only {len(back)} of {len(letters)} redriven records arrived"
        back += [m for m in batch if not m.error()]
    probe.close()
    assert sorted(((m.key(), m.value()) for m in back), key=repr) == sorted(letters, key=repr)  # byte-exact
    origins = {dict(m.headers())[REDRIVEN_FROM] for m in back}
    assert origins == {f"{spec.dead_letter}/0/{d.offset}".encode() for d in found}


def _all_records(topo, topic: str) -> list:
    """Every record of a one-partition topic, raw."""
    probe = Consumer({"bootstrap.servers": topo.kafka.bootstrap, "group.id": "test-dlq-all"})
    end = probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    probe.assign([TopicPartition(topic, 0, 0)])
    found = []
    while len(found) < end and (message := probe.poll(10)) is not None:
        found += [] if message.error() else [message]
    probe.close()
    return found


def test_a_bridges_dead_letters_show_and_redrive_through_its_conversion(tmp_path: Path, kafka: str) -> None:
    path, topo = write_topology(tmp_path, kafka, partitions=1)
    raw = yaml.safe_load(path.read_text())
    ingest = topo.ingest_topic()
    dead = ingest.removesuffix("docs.raw") + "docs.dlq.bridges"
    raw["topics"][dead] = {"partitions": 1}
    redis = {"kind": "redis", "url": "redis://127.0.0.1:1/0", "stream": "docs", "dead_letter": dead}  # never dialled
    raw["bridges"] = {"sources": {"redis": {**redis, "max_bytes": 2000}, "other": {**redis, "stream": "other"}},
                      "sinks": {"out": {**redis, "topic": ingest, "group": "g-out"}}}
    path, topo = sandbox.write(raw, tmp_path, ROOT / "schemas")
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    big = json.dumps({"doc_id": "big", "text": "x" * 3000}).encode()
    ok = json.dumps({"doc_id": "ok", "text": "fine"}).encode()

    async def through_the_bridges() -> None:  # the bridges' own path: convert, dead-letter, produce
        for name, bodies in (("redis", [ok, big, b"{not json"]), ("other", [b"[1]"])):
            await SourceBridge(topo, name).deliver([Message(b, f"1-{i}") for i, b in enumerate(bodies)])

    asyncio.run(through_the_bridges())
    kafka_producer = producer(topo)  # and one the sink's stage runtime dead-lettered
    kafka_producer.produce(dead, key=b"k", value=b"\x00raw", headers=error_headers(
        bridge_stage("out"), "bad-magic", "BadMagic", "not Avro", ingest, 0, 7))
    assert kafka_producer.flush(10) == 0

    shown = run_cli("-c", str(path), "dlq", "show", "--bridge", "redis")
    table = " ".join(shown.stderr.split())
    assert shown.returncode == 0 and "2 dead letter(s) from bridge redis" in table, shown.stderr
    assert "too-large │ 1" in table and "bad-json │ 1" in table and "not-an-object" not in table  # not other's
    assert "redis:docs id 1-1" in table
    assert "1 dead letter(s) from bridge out" in " ".join(run_cli("-c", str(path), "dlq", "show", "--bridge",
                                                                  "out").stderr.split())
    for args, message in ((["show"], "give a STAGE, or --bridge NAME"),
                          (["redrive", "--bridge", "nope"], "no bridge 'nope'")):
        done = run_cli("-c", str(path), "dlq", *args)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr

    # The fix: a larger max_bytes. The big body passes the bridge's conversion now; the bad JSON still does not.
    raw["bridges"]["sources"]["redis"]["max_bytes"] = 900_000
    path, topo = sandbox.write(raw, tmp_path, ROOT / "schemas")
    dry = run_cli("-c", str(path), "dlq", "redrive", "--bridge", "redis", "--dry-run")
    assert dry.returncode == 0 and "1 of 2 dead letter(s) pass bridge redis's conversion now and would go" in \
        " ".join(dry.stderr.split()), dry.stderr
    before = len(_all_records(topo, ingest))
    done = run_cli("-c", str(path), "dlq", "redrive", "--bridge", "redis")
    text = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stderr  # not everything could go
    assert "1 of 2 dead letter(s) pass bridge redis's conversion now and went" in text
    assert f"1 still refused, left in {dead}: bad-json 1" in text and f"{dead}/0/1: bad-json: not JSON" in text
    records = _all_records(topo, ingest)
    assert len(records) == before + 1
    back = records[-1]
    assert back.key() == b"big" and dict(back.headers())[REDRIVEN_FROM] == f"{dead}/0/0".encode()
    assert codec_for(topo, ingest).decode(back.value())["text"] == "x" * 3000  # re-encoded as the bridge does
    # A sink's letter is a Kafka record: back to the topic it reads, byte for byte.
    done = run_cli("-c", str(path), "dlq", "redrive", "--bridge", "out")
    assert done.returncode == 0 and f"redrove 1 record(s) from {dead} to {ingest}" in " ".join(done.stderr.split())
    last = _all_records(topo, ingest)[-1]
    assert (last.key(), last.value()) == (b"k", b"\x00raw")
