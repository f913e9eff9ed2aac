"""Replay (offset resets) and backfill on the real broker, cross-checked with a raw confluent-kafka consumer."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from tests.conftest import lag, run_cli, start_stage, wait_for


def _produce(path: Path, topic: str, folder: Path, ids: range) -> None:
    source = folder / f"docs-{ids.start}.jsonl"
    source.write_text("".join(json.dumps({"doc_id": f"r{i}", "text": f"Document {i}. It has two sentences."}) + "\n"
                              for i in ids))
    assert run_cli("-c", str(path), "produce", "-t", topic, str(source)).returncode == 0


def _raw_consumer(topo, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": topo.kafka.bootstrap, "group.id": group, "enable.auto.commit": False})


def _committed(topo, stage: str) -> dict[int, int]:
    """Committed offsets as an independent client sees them."""
    spec = topo.stages[stage]
    probe = _raw_consumer(topo, spec.group)
    try:
        parts = [TopicPartition(spec.input, p) for p in range(topo.topic(spec.input).partitions)]
        return {tp.partition: tp.offset for tp in probe.committed(parts, timeout=10)}
    finally:
        probe.close()


def _first_offsets_at_or_after(topo, topic: str, ms: int) -> dict[int, int]:
    """Read every record and find, per partition, the first offset whose timestamp is >= ms (else the end)."""
    probe = _raw_consumer(topo, "test-scan")
    ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(topo.topic(topic).partitions)}
    probe.assign([TopicPartition(topic, p, 0) for p in ends])
    first = dict(ends)
    seen = 0
    while seen < sum(ends.values()):
        msg = probe.poll(5)
        assert msg is not None and not msg.error()
        seen += 1
        if msg.timestamp()[1] >= ms:
            first[msg.partition()] = min(first[msg.partition()], msg.offset())
    probe.close()
    return first


def _applied(topology) -> tuple[Path, object, str]:
    """The test topology applied to the broker, and its ingest topic."""
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    return path, topo, topo.stages["preprocess"].input


def test_replay_targets_dry_run_and_refusal(topology, tmp_path: Path) -> None:
    path, topo, raw = _applied(topology)
    _produce(path, raw, tmp_path, range(0, 30))
    time.sleep(1.5)
    middle = int(time.time() * 1000)
    time.sleep(0.2)
    _produce(path, raw, tmp_path, range(30, 50))

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {"preprocess": start_stage(path, "preprocess", logs)}
    try:
        wait_for(lambda: lag(topo, ["preprocess"]) == 0 and sum(_committed(topo, "preprocess").values()) == 50,
                 180, "preprocess to finish", procs, logs)
        refused = run_cli("-c", str(path), "replay", "preprocess", "--to-earliest", "--execute")
        assert refused.returncode == 2
        assert "active member" in refused.stderr and "stop the preprocess stage" in refused.stderr
    finally:
        procs["preprocess"].send_signal(signal.SIGTERM)
        procs["preprocess"].wait(60)
    ends = _committed(topo, "preprocess")
    assert run_cli("-c", str(path), "replay", "preprocess", "--to-earliest", "--wait").returncode == 0
    assert _committed(topo, "preprocess") == ends  # a dry run changes nothing

    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle / 1000)) + f".{middle % 1000:03d}+00:00"
    done = run_cli("-c", str(path), "replay", "preprocess", "--to-datetime", when, "--execute")
    assert done.returncode == 0, done.stderr
    expected = _first_offsets_at_or_after(topo, raw, middle)
    assert _committed(topo, "preprocess") == expected
    assert sum(ends[p] - expected[p] for p in ends) == 20  # exactly the second batch is to be reprocessed

    assert run_cli("-c", str(path), "replay", "preprocess", "--shift-by", "-1000", "--execute").returncode == 0
    assert set(_committed(topo, "preprocess").values()) == {0}  # clamped to the log start
    assert run_cli("-c", str(path), "replay", "preprocess", "--shift-by", "3", "--partitions", "0",
                   "--execute").returncode == 0
    after = _committed(topo, "preprocess")
    assert after[0] == min(3, ends[0]) and after[1] == 0
    assert run_cli("-c", str(path), "replay", "preprocess", "--to-offset", "999999", "--execute").returncode == 0
    assert _committed(topo, "preprocess") == ends  # clamped to the log end
    bad = run_cli("-c", str(path), "replay", "preprocess", "--by-duration", "two hours")
    assert bad.returncode == 2 and "ISO 8601 duration" in bad.stderr


def test_backfill_processes_exactly_the_range(topology, tmp_path: Path) -> None:
    path, topo, raw = _applied(topology)
    _produce(path, raw, tmp_path, range(0, 10))
    time.sleep(1.5)
    since = time.time()
    _produce(path, raw, tmp_path, range(10, 25))
    time.sleep(1.5)
    until = time.time()
    _produce(path, raw, tmp_path, range(25, 40))
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"  # noqa: E731
    done = run_cli("-c", str(path), "backfill", "preprocess", "--from", iso(since), "--until", iso(until),
                   "--rate", "1000", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "backfilled 15 record(s)" in done.stderr
    out = run_cli("-c", str(path), "consume", topo.stages["preprocess"].output, "--from-beginning", "-e")
    passages = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(p["doc_id"] for p in passages) == sorted(f"r{i}" for i in range(10, 25))
    assert all(c < 0 for c in _committed(topo, "preprocess").values())  # the live group never committed
