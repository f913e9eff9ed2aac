"""Dead letters on the real broker: original bytes kept, reasons in headers, `dlq show`, byte-exact redrive."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka.clients import producer
from pipeline.config import load_topology
from pipeline.kafka.dlq import REDRIVEN_FROM, dead_letters, error_headers, redrive
from tests.conftest import lag, run_cli, start_stage, wait_for


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
