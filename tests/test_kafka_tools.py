"""`pipeline dev kafka TOOL`: Kafka's own CLI against the broker, and `pipeline offsets` agreeing with it."""

from __future__ import annotations

import json

from confluent_kafka import TopicPartition

from pipeline.dev.tools import TOOLS, with_bootstrap
from pipeline.kafka.clients import consumer, producer
from tests.conftest import run_cli


def test_bootstrap_is_added_where_the_tool_expects_it() -> None:
    assert with_bootstrap("topics", ["--list"], "h:1") == ["--bootstrap-server", "h:1", "--list"]
    assert with_bootstrap("topics", ["--bootstrap-server=x:2", "--list"], "h:1") == ["--bootstrap-server=x:2", "--list"]
    assert with_bootstrap("features", ["--bootstrap-controller", "c:3", "describe"], "h:1") == [
        "--bootstrap-controller", "c:3", "describe"]
    assert with_bootstrap("cluster", ["cluster-id"], "h:1") == ["cluster-id", "--bootstrap-server", "h:1"]
    assert with_bootstrap("cluster", ["--help"], "h:1") == ["--help"]


def test_unknown_tool_exits_2_with_the_list() -> None:
    done = run_cli("dev", "kafka", "no-such-tool", "--list")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "unknown Kafka tool 'no-such-tool'" in message
    assert all(name in message for name in TOOLS)
    assert "Traceback" not in done.stderr


def _describe(path: str, group: str) -> dict[int, tuple[int, int, int]]:
    """The official tool's --describe, per partition: (current offset, log end, lag)."""
    done = run_cli("-c", path, "dev", "kafka", "consumer-groups", "--describe", "--group", group)
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        cells = line.split()
        if cells and cells[0] == group:
            rows[int(cells[2])] = (int(cells[3]), int(cells[4]), int(cells[5]))
    return rows


def test_offsets_agree_with_kafka_consumer_groups(topology) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    spec = topo.stages["preprocess"]
    sent = producer(topo)
    for partition, count in ((0, 5), (1, 3)):
        for i in range(count):
            sent.produce(spec.input, value=b"x%d" % i, partition=partition)
    assert sent.flush(30) == 0
    committer = consumer(topo, spec.group)
    try:
        committer.commit(offsets=[TopicPartition(spec.input, 0, 2), TopicPartition(spec.input, 1, 3)],
                         asynchronous=False)
    finally:
        committer.close()

    ours = run_cli("-c", str(path), "offsets", "preprocess", "--json")
    assert ours.returncode == 0, ours.stderr
    rows = {r["partition"]: (r["committed"], r["end"], r["lag"]) for r in json.loads(ours.stdout)}
    assert rows == {0: (2, 5, 3), 1: (3, 3, 0)}
    assert _describe(str(path), spec.group) == rows

    # The tool's own exit status comes back: describing a topic that does not exist fails.
    missing = run_cli("-c", str(path), "dev", "kafka", "topics", "--describe", "--topic", "no.such.topic")
    assert missing.returncode == 1
    assert "no.such.topic" in missing.stdout + missing.stderr
