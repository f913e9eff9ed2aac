"""Bridges on real servers: NATS JetStream, RabbitMQ and Redis Streams into the ingest topic, 2,000 messages per source
at least once through two SIGKILLs, poison dead-lettered with its bytes intact, RabbitMQ priorities, Redis XAUTOCLAIM
takeover; sinks through a kill -9; each server stopped and started again under a source and a sink (retries, the
stuck metric, nothing lost); bridged docs through the four stages into Qdrant."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import aio_pika
import nats
import pytest
import redis
import yaml

from pipeline.avro.codecs import codec_for
from pipeline.config import Topology
from pipeline.dev import sandbox
from pipeline.kafka.consume import consume
from pipeline.kafka.dlq import read_headers
from pipeline.kafka.offsets import stage_lag
from pipeline.kafka.sender import Sender
from tests.conftest import (NATS_TEST_PORT, PIPELINE, PORT_SHIFT, RABBITMQ_TEST_PORT, REDIS_TEST_PORT, ROOT, lag,
                            run_cli, start_stage, stop_all, stored_points, wait_for, write_topology)

N = 2_000
MAX_BYTES = 20_000
POISON = {  # body -> the reason its dead letter must carry
    b"{not json": "bad-json",
    json.dumps({"doc_id": "poison-no-text"}).encode(): "invalid-record",
    json.dumps({"doc_id": "poison-big", "text": "x" * (MAX_BYTES + 1)}).encode(): "too-large",
}


def doc(doc_id: str) -> bytes:
    return json.dumps({"doc_id": doc_id, "text": f"text of {doc_id}", "source": "bridge-test"}).encode()


def bridge_topology(folder: Path, kafka: str, name: str, source: dict) -> tuple[Path, Topology]:
    """The repo's topology on the test broker (one partition, so offsets give order) plus one bridge source."""
    path, topology = write_topology(folder, kafka, partitions=1)
    raw = yaml.safe_load(path.read_text())
    prefix = topology.ingest_topic().removesuffix("docs.raw")
    dead = f"{prefix}docs.dlq.bridge"
    raw["topics"][dead] = {"partitions": 1}
    raw["bridges"] = {"sources": {name: {"dead_letter": dead, "max_bytes": MAX_BYTES, **source}}}
    path, topology = sandbox.write(raw, folder, ROOT / "schemas")
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    return path, topology


def start_bridge(path: Path, name: str, logs: Path, slow_ack: bool = False) -> subprocess.Popen:
    """`pipeline bridge in NAME`; with slow_ack, one that waits 3 s between Kafka's acknowledgement and the ack
    at the source (tests/bridge_slow_ack.py), so a kill lands mid-batch."""
    log = open(logs / f"bridge-{name}.log", "ab")
    command = [sys.executable, "-m", "tests.bridge_slow_ack"] if slow_ack else PIPELINE
    return subprocess.Popen([*command, "-c", str(path), "bridge", "in", name], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)


def records(topology: Topology, topic: str) -> list:
    return list(consume(topology, topic, from_beginning=True, exit_at_end=True, idle_timeout=10))


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"bridge exited {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:] if log else ''}")


# --- what each source's server needs from the test: publish, and say whether anything is left unacked -------

class RedisSide:
    def __init__(self, url: str, stream: str) -> None:
        self.client, self.stream, self.group = redis.Redis.from_url(url), stream, "pipeline-bridge-redis"

    def publish(self, bodies: list[bytes]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for body in bodies:
                pipe.xadd(self.stream, {"body": body})
            pipe.execute()

    def unacked(self) -> int:
        group = next(g for g in self.client.xinfo_groups(self.stream) if g["name"] == self.group.encode())
        return int(group["pending"]) + int(group["lag"] or 0)


class RabbitSide:
    def __init__(self, url: str, queue: str, max_priority: int = 10) -> None:
        self.url, self.queue, self.args = url, queue, {"x-max-priority": max_priority}

    async def _publish(self, bodies: list[tuple[bytes, int]]) -> None:
        connection = await aio_pika.connect(self.url)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(self.queue, durable=True, arguments=self.args)
        for body, priority in bodies:
            message = aio_pika.Message(body, priority=priority, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=self.queue)
        await connection.close()

    def publish(self, bodies: list[bytes], priority: int = 0) -> None:
        asyncio.run(self._publish([(b, priority) for b in bodies]))

    async def _count(self) -> int:
        connection = await aio_pika.connect(self.url)
        queue = await (await connection.channel()).declare_queue(self.queue, passive=True)
        await connection.close()
        return queue.declaration_result.message_count + queue.declaration_result.consumer_count

    def unacked(self) -> int:  # asked once the bridge is stopped: its unacked messages would be ready again
        return asyncio.run(self._count())


class NatsSide:
    def __init__(self, url: str, stream: str, subject: str, durable: str = "bridge-nats") -> None:
        self.url, self.stream, self.subject, self.durable = url, stream, subject, durable

    async def _publish(self, bodies: list[bytes]) -> None:
        client = await nats.connect(self.url)
        js = client.jetstream()
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=self.stream, subjects=[self.subject])
        for body in bodies:
            await js.publish(self.subject, body)
        await client.close()

    def publish(self, bodies: list[bytes]) -> None:
        asyncio.run(self._publish(bodies))

    async def _unacked(self) -> int:
        client = await nats.connect(self.url)
        info = await client.jetstream().consumer_info(self.stream, self.durable)
        await client.close()
        return info.num_pending + info.num_ack_pending

    def unacked(self) -> int:
        return asyncio.run(self._unacked())


def side_for(kind: str, urls: dict[str, str]) -> tuple[dict, object]:
    tag = uuid.uuid4().hex[:8]
    if kind == "redis":
        return {"kind": "redis", "url": urls["redis"], "stream": f"in-{tag}", "batch": 20}, \
            RedisSide(urls["redis"], f"in-{tag}")
    if kind == "rabbitmq":
        return {"kind": "rabbitmq", "url": urls["rabbitmq"], "queue": f"in-{tag}", "batch": 20, "max_priority": 10}, \
            RabbitSide(urls["rabbitmq"], f"in-{tag}")
    return {"kind": "nats", "url": urls["nats"], "stream": f"IN-{tag}", "subject": f"in.{tag}", "batch": 20}, \
        NatsSide(urls["nats"], f"IN-{tag}", f"in.{tag}")


@pytest.fixture(params=["redis", "rabbitmq", "nats"])
def source_kind(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    kind = request.param
    fixture = {"redis": "redis_url", "rabbitmq": "amqp_url", "nats": "nats_url"}[kind]
    return kind, {kind: request.getfixturevalue(fixture)}


def test_every_message_reaches_kafka_through_two_sigkills_and_poison_is_dead_lettered(
        tmp_path: Path, kafka: str, source_kind):
    kind, urls = source_kind
    source, side = side_for(kind, urls)
    # NATS redelivers what a dead bridge held after ack_wait_s: short here.
    path, topology = bridge_topology(tmp_path, kafka, kind, {**source, "batch": 20,
                                                            **({"ack_wait_s": 3} if kind == "nats" else {})})
    ingest, dead = topology.ingest_topic(), topology.bridges.sources[kind].dead_letter
    ids = [f"{kind}-{i:04d}" for i in range(N)]
    if kind == "nats":  # the test publishes first, so it makes the stream the bridge would make
        side.publish([])
    side.publish(list(POISON) + [doc(i) for i in ids[:20]])
    # The rest arrives while the bridge runs, is killed twice and restarts, so each kill falls mid-flow.
    publisher = threading.Thread(target=lambda: [(side.publish([doc(i) for i in ids[k:k + 40]]), time.sleep(0.05))
                                                 for k in range(20, N, 40)])
    log = tmp_path / f"bridge-{kind}.log"
    bridge = start_bridge(path, kind, tmp_path, slow_ack=True)
    try:
        for kill in range(2):
            produced = len(records(topology, ingest))
            # This bridge produced a batch, so it is in the 3 s between Kafka's ack and the source's: a kill now
            # leaves that batch unacked, and the source delivers it again.
            wait_until(lambda: len(records(topology, ingest)) > produced, 60, "a batch from this bridge", bridge, log)
            if kill == 0:
                publisher.start()
            bridge.send_signal(signal.SIGKILL)
            bridge.wait(10)
            bridge = start_bridge(path, kind, tmp_path, slow_ack=kill == 0)
        publisher.join(60)
        wait_until(lambda: {r.value["doc_id"] for r in records(topology, ingest)} >= set(ids), 120,
                   "every doc id on the ingest topic", bridge, log)
        wait_until(lambda: len(records(topology, dead)) >= len(POISON), 30, "the dead letters", bridge, log)
        if kind != "rabbitmq":  # (RabbitMQ gave the killed connection's messages back at once)
            wait_until(lambda: side.unacked() == 0, 60, "the killed batches redelivered and acked", bridge, log)
    finally:
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(30) == 0, log.read_text()[-3000:]
    found = Counter(r.value["doc_id"] for r in records(topology, ingest))
    assert set(found) == set(ids)  # exactly these ids: nothing lost, no poison on the ingest topic
    duplicates = sum(found.values()) - N
    print(f"{kind}: {N} messages, {duplicates} duplicate(s) on the ingest topic after two SIGKILLs")
    assert duplicates >= 2  # each killed batch was in Kafka but not acked: the source delivered it again
    assert all(r.key == r.value["doc_id"].encode() for r in records(topology, ingest))
    letters = records(topology, dead)
    by_body = {r.raw: read_headers(r.headers) for r in letters}
    assert set(by_body) == set(POISON)  # bytes intact
    assert {body: h["reason"] for body, h in by_body.items()} == POISON
    assert all(h["stage"] == f"bridge-{kind}" and h["source_id"] for h in by_body.values())
    assert side.unacked() == 0


def test_docs_bridged_from_redis_end_in_qdrant(tmp_path: Path, kafka: str, redis_url: str):
    """The bridge in front of the pipeline's four stages: every bridged doc id is a point in Qdrant."""
    source, side = side_for("redis", {"redis": redis_url})
    path, topology = bridge_topology(tmp_path, kafka, "redis", source)
    ids = [f"q-{i:03d}" for i in range(50)]
    side.publish([doc(i) for i in ids])
    procs = {"bridge-redis": start_bridge(path, "redis", tmp_path)}
    procs.update({name: start_stage(path, name, tmp_path) for name in topology.stages})
    try:
        wait_for(lambda: sum(r.committed or 0 for r in stage_lag(topology, "store")) > 0 and side.unacked() == 0
                 and lag(topology) == 0, 300, "every bridged doc through the stages", procs, tmp_path)
    finally:
        stop_all(procs)
    assert {r.value["doc_id"] for r in records(topology, topology.ingest_topic())} == set(ids)
    points = stored_points(topology.stages["store"].options["path"])
    assert {payload["doc_id"] for payload in points.values()} == set(ids)


def test_rabbitmq_priorities_reach_kafka_first(tmp_path: Path, kafka: str, amqp_url: str):
    source, side = side_for("rabbitmq", {"rabbitmq": amqp_url})
    path, topology = bridge_topology(tmp_path, kafka, "rabbitmq", {**source, "batch": 10})
    low, high = [f"low-{i:03d}" for i in range(40)], [f"high-{i:03d}" for i in range(40)]
    side.publish([doc(i) for i in low], priority=1)  # the backlog is there before the bridge starts
    side.publish([doc(i) for i in high], priority=9)
    bridge = start_bridge(path, "rabbitmq", tmp_path)
    log = tmp_path / "bridge-rabbitmq.log"
    try:
        wait_until(lambda: len(records(topology, topology.ingest_topic())) >= 80, 60, "80 records", bridge, log)
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(30)
    order = [r.value["doc_id"] for r in sorted(records(topology, topology.ingest_topic()), key=lambda r: r.offset)]
    assert set(order[:40]) == set(high) and set(order[40:]) == set(low)


def test_redis_xautoclaim_takes_over_a_dead_bridges_entries(tmp_path: Path, kafka: str, redis_url: str):
    source, side = side_for("redis", {"redis": redis_url})
    path, topology = bridge_topology(tmp_path, kafka, "redis", {**source, "claim_idle_ms": 1000,
                                                                  "consumer": "bridge-b"})
    ids = [f"claimed-{i:03d}" for i in range(30)]
    side.publish([doc(i) for i in ids])
    side.client.xgroup_create(side.stream, side.group, id="0")
    # A bridge "a" read every entry and died before acking any.
    taken = side.client.xreadgroup(side.group, "bridge-a", {side.stream: ">"}, count=100)
    assert len(taken[0][1]) == 30 and side.client.xpending(side.stream, side.group)["pending"] == 30
    bridge = start_bridge(path, "redis", tmp_path)
    log = tmp_path / "bridge-redis.log"
    try:
        wait_until(lambda: {r.value["doc_id"] for r in records(topology, topology.ingest_topic())} == set(ids), 60,
                   "the claimed entries on the ingest topic", bridge, log)
        wait_until(lambda: side.client.xpending(side.stream, side.group)["pending"] == 0, 30, "no entry pending",
                   bridge, log)
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(30)
    consumers = {c["name"].decode(): c["pending"] for c in side.client.xinfo_consumers(side.stream, side.group)}
    assert consumers.get("bridge-a", 0) == 0 and "bridge-b" in consumers


# --- sinks: a Kafka topic out to each server, on the stage runtime, through a kill -9 --------------------------

def sink_topology(folder: Path, kafka: str, name: str, sink: dict) -> tuple[Path, Topology]:
    path, topology = write_topology(folder, kafka, partitions=1)
    raw = yaml.safe_load(path.read_text())
    prefix = topology.ingest_topic().removesuffix("docs.raw")
    raw["topics"][f"{prefix}docs.dlq.bridge"] = {"partitions": 1}
    raw["bridges"] = {"sinks": {name: {"topic": topology.ingest_topic(), "group": f"{prefix}bridge-{name}",
                                       "dead_letter": f"{prefix}docs.dlq.bridge", "web_port": 6120 + PORT_SHIFT,
                                       "batch": {"max_records": 20, "max_wait_ms": 20}, **sink}}}
    path, topology = sandbox.write(raw, folder, ROOT / "schemas")
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    return path, topology


def produce_docs(topology: Topology, ids: list[str]) -> None:
    topic = topology.ingest_topic()
    codec, sender = codec_for(topology, topic), Sender(topology)
    for i in ids:
        sender.send(topic, codec.encode(json.loads(doc(i))), i.encode())
    assert sender.flush(30).ok


async def _rabbit_out(url: str, exchange: str, queue: str, declare: bool) -> list[bytes]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    if declare:
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        q = await channel.declare_queue(queue, durable=True)
        await q.bind(ex)
        await connection.close()
        return []
    q = await channel.declare_queue(queue, durable=True)
    bodies = []
    while (message := await q.get(no_ack=True, fail=False)) is not None:
        bodies.append(message.body)
    await connection.close()
    return bodies


async def _nats_out(url: str, stream: str, subject: str, declare: bool) -> list[bytes]:
    client = await nats.connect(url)
    js = client.jetstream()
    if declare:
        await js.add_stream(name=stream, subjects=[subject])
        await client.close()
        return []
    count = (await js.stream_info(stream)).state.messages
    bodies = [(await js.get_msg(stream, seq)).data for seq in range(1, count + 1)]
    await client.close()
    return bodies


def sink_side(kind: str, url: str):
    """The sink's settings and a function returning every body the server got so far (read once, kept here)."""
    tag = uuid.uuid4().hex[:8]
    if kind == "redis":
        client = redis.Redis.from_url(url)
        return {"kind": "redis", "url": url, "stream": f"out-{tag}", "maxlen": 100_000}, \
            lambda: [fields[b"body"] for _, fields in client.xrange(f"out-{tag}")]
    if kind == "rabbitmq":
        asyncio.run(_rabbit_out(url, f"out-{tag}", f"out-{tag}", True))
        got: list[bytes] = []
        return {"kind": "rabbitmq", "url": url, "exchange": f"out-{tag}", "format": "avro"}, \
            lambda: got.extend(asyncio.run(_rabbit_out(url, f"out-{tag}", f"out-{tag}", False))) or got
    asyncio.run(_nats_out(url, f"OUT-{tag}", f"out.{tag}", True))
    return {"kind": "nats", "url": url, "subject": f"out.{tag}", "jetstream": True}, \
        lambda: asyncio.run(_nats_out(url, f"OUT-{tag}", f"out.{tag}", False))


def sink_setup(folder: Path, kafka: str, kind: str, url: str):
    """A sink of KIND to the server at URL: its topology file, the topology, and a function returning the doc id of
    every body the server got so far."""
    sink, received = sink_side(kind, url)
    path, topology = sink_topology(folder, kafka, kind, sink)
    decode = codec_for(topology, topology.ingest_topic()).decode if sink.get("format") == "avro" else json.loads
    return path, topology, lambda: [decode(body)["doc_id"] for body in received()]


def start_sink(path: Path, kind: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*PIPELINE, "-c", str(path), "bridge", "out", kind, "--loglevel", "warn"], cwd=ROOT,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def test_each_sink_delivers_every_record_through_a_kill_9(tmp_path: Path, kafka: str, source_kind):
    kind, urls = source_kind
    path, topology, doc_ids = sink_setup(tmp_path, kafka, kind, urls[kind])
    ids = [f"out-{i:04d}" for i in range(200)]
    produce_docs(topology, ids[:100])
    log = tmp_path / f"sink-{kind}.log"
    worker = start_sink(path, kind, log)
    try:
        wait_until(lambda: len(doc_ids()) > 0, 90, "the first published records", worker, log)
        worker.send_signal(signal.SIGKILL)  # published but not committed records come again
        worker.wait(10)
        produce_docs(topology, ids[100:])
        worker = start_sink(path, kind, log)
        wait_until(lambda: set(doc_ids()) >= set(ids), 90, "every record at the sink", worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    found = Counter(doc_ids())
    assert set(found) == set(ids)
    duplicates = sum(found.values()) - len(ids)
    print(f"{kind} sink: {len(ids)} records, {duplicates} duplicate(s) after one kill -9")
    if kind == "nats":  # JetStream dropped every republished record by its Nats-Msg-Id
        assert duplicates == 0


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory):
    """Servers for the outage tests alone (they stop and start them), one per kind, started when first asked for;
    the session's servers stay up for the other tests."""
    from pipeline.dev.servers import SERVERS, LocalServer

    ports = {"redis": REDIS_TEST_PORT + 5, "rabbitmq": RABBITMQ_TEST_PORT + 5, "nats": NATS_TEST_PORT + 5}
    servers: dict[str, LocalServer] = {}

    def server(kind: str) -> LocalServer:
        if kind not in servers:
            servers[kind] = LocalServer(SERVERS[kind], tmp_path_factory.mktemp(f"own-{kind}"), ports[kind])
        servers[kind].up()  # (again, if a failed test left it down)
        return servers[kind]

    yield server
    for started in servers.values():
        started.down()


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats"])
def test_a_source_outage_gives_retries_and_a_stuck_metric_and_loses_nothing(tmp_path: Path, kafka: str, kind: str,
                                                                             own_server):
    server = own_server(kind)
    port = 6130 + PORT_SHIFT
    source, side = side_for(kind, {kind: server.url})
    path, topology = bridge_topology(tmp_path, kafka, kind, {**source, "web_port": port, "batch": 50,
                                                              **({"ack_wait_s": 3} if kind == "nats" else {})})
    ingest = topology.ingest_topic()
    before, after = [f"before-{i:03d}" for i in range(50)], [f"after-{i:03d}" for i in range(50)]
    if kind == "nats":
        side.publish([])
    side.publish([doc(i) for i in before])
    log = tmp_path / f"bridge-{kind}.log"
    # Slow acks: the server goes away between Kafka's acknowledgement of a batch and its ack at the source.
    bridge = start_bridge(path, kind, tmp_path, slow_ack=True)
    try:
        wait_until(lambda: len(records(topology, ingest)) > 0, 60, "the first batch", bridge, log)
        assert metric(port, "pipeline_bridge_stuck") == 0
        server.down()
        wait_until(lambda: metric(port, "pipeline_bridge_stuck") == 1, 30, "the stuck metric", bridge, log)
        assert metric(port, "pipeline_bridge_retries_total") >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            assert response.status == 200
        server.up()  # same port and folder: the stream, queue or consumer group comes back with what it held
        side.publish([doc(i) for i in after])
        wait_until(lambda: {r.value["doc_id"] for r in records(topology, ingest)} >= set(before + after), 90,
                   "every doc id after the outage", bridge, log)
        wait_until(lambda: metric(port, "pipeline_bridge_stuck") == 0, 20, "stuck back to 0", bridge, log)
        wait_until(lambda: metric(port, "pipeline_bridge_source_backlog") == 0, 30, "backlog 0", bridge, log)
        produced = metric(port, "pipeline_bridge_messages_out_total")
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(30)
    assert side.unacked() == 0
    found = Counter(r.value["doc_id"] for r in records(topology, ingest))
    assert set(found) == set(before + after) and sum(found.values()) == produced
    print(f"{kind} source outage: 100 messages, {sum(found.values()) - 100} duplicate(s) on the ingest topic")


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats"])
def test_a_sink_outage_gives_retries_and_a_stuck_metric_and_loses_nothing(tmp_path: Path, kafka: str, kind: str,
                                                                           own_server):
    server = own_server(kind)
    path, topology, doc_ids = sink_setup(tmp_path, kafka, kind, server.url)
    port = 6120 + PORT_SHIFT  # the sink's web port (sink_topology)
    ids = [f"out-{i:03d}" for i in range(100)]
    produce_docs(topology, ids[:50])
    log = tmp_path / f"sink-{kind}.log"
    worker = start_sink(path, kind, log)
    try:
        wait_until(lambda: set(doc_ids()) >= set(ids[:50]), 90, "the first 50 at the sink", worker, log)
        server.down()
        produce_docs(topology, ids[50:])  # the sink takes them from Kafka and cannot publish them
        wait_until(lambda: metric(port, "pipeline_stuck_on_transient_error") == 1, 90, "the stuck metric", worker,
                   log)
        assert metric(port, "pipeline_transient_retries_total") >= 1
        server.up()  # same port and folder: the stream or durable queue comes back with what it held
        wait_until(lambda: set(doc_ids()) >= set(ids), 90, "every record at the sink", worker, log)
        wait_until(lambda: metric(port, "pipeline_stuck_on_transient_error") == 0, 20, "stuck back to 0", worker,
                   log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    found = Counter(doc_ids())
    assert set(found) == set(ids)
    print(f"{kind} sink outage: 100 records, {sum(found.values()) - 100} duplicate(s) at the sink")


def test_rabbitmq_nacks_a_batch_kafka_refuses_to_the_queues_dead_letter_exchange(
        tmp_path: Path, kafka: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch):
    from confluent_kafka import KafkaError

    from pipeline.bridges import base
    from pipeline.kafka.sender import Barrier, Failure

    source, side = side_for("rabbitmq", {"rabbitmq": amqp_url})
    dlx = f"dlx-{uuid.uuid4().hex[:6]}"
    asyncio.run(_rabbit_out(amqp_url, dlx, dlx, True))  # a fanout exchange and a queue bound to it
    path, topology = bridge_topology(tmp_path, kafka, "rabbitmq", {**source, "dead_letter_exchange": dlx})
    side.args["x-dead-letter-exchange"] = dlx
    side.publish([doc(f"refused-{i}") for i in range(5)])
    monkeypatch.setattr(base, "SEND_ATTEMPTS", 2)
    bridge = base.SourceBridge(topology, "rabbitmq")
    sent = []
    send = bridge.sender.send
    bridge.sender.send = lambda topic, value, key=None, headers=None, tag=None: (sent.append((topic, tag)),
                                                                                send(topic, value, key, headers, tag))
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)
    # Kafka "refuses" every record: nothing may be acked, all must reach the dead-letter exchange.
    bridge.sender.flush = lambda timeout: Barrier(0, [Failure(tag, topic, timed_out) for topic, tag in sent[-5:]])

    async def run() -> list[bytes]:
        task = asyncio.create_task(bridge.run())
        deadline = time.monotonic() + 30
        while bridge.m.given_up._value.get() < 5 and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.1)
        bridge.stopping.set()
        await task
        return await _rabbit_out(amqp_url, dlx, dlx, False)

    nacked = asyncio.run(run())
    assert sorted(json.loads(b)["doc_id"] for b in nacked) == [f"refused-{i}" for i in range(5)]
    assert bridge.m.acked._value.get() == 0 and side.unacked() == 0


def test_nats_progress_acks_hold_a_long_flush_and_max_deliver_is_the_consumers(nats_url: str):
    from pipeline.bridges.nats import NatsSource
    from pipeline.config import BridgeSource

    tag = uuid.uuid4().hex[:8]
    spec = BridgeSource(kind="nats", url=nats_url, stream=f"P-{tag}", subject=f"p.{tag}", batch=10, block_ms=500,
                        ack_wait_s=1, max_deliver=3, dead_letter="unused")
    side = NatsSide(nats_url, spec.stream, spec.subject)

    async def scenario() -> tuple[int, int, int]:
        source = NatsSource("nats", spec)
        await source.open()
        await side._publish([doc(f"p-{i}") for i in range(5)])
        batch = await source.read()
        for _ in range(6):  # 3 s of "flushing", three times the ack wait
            await asyncio.sleep(0.5)
            await source.in_progress(batch)
        again = await source.read()  # nothing redelivered meanwhile
        await source.ack(batch)
        info = await source.subscription.consumer_info()
        await source.close()
        return len(batch), len(again), info.config.max_deliver

    got, redelivered, max_deliver = asyncio.run(scenario())
    assert (got, redelivered, max_deliver) == (5, 0, 3)
    assert asyncio.run(side._unacked()) == 0


def test_without_progress_acks_nats_redelivers_after_the_ack_wait(nats_url: str):
    """The other side of the test above: it can fail."""
    from pipeline.bridges.nats import NatsSource
    from pipeline.config import BridgeSource

    tag = uuid.uuid4().hex[:8]
    spec = BridgeSource(kind="nats", url=nats_url, stream=f"Q-{tag}", subject=f"q.{tag}", batch=10, block_ms=500,
                        ack_wait_s=1, dead_letter="unused")

    async def scenario() -> int:
        source = NatsSource("nats", spec)
        await source.open()
        await NatsSide(nats_url, spec.stream, spec.subject)._publish([doc("q-0")])
        assert len(await source.read()) == 1
        await asyncio.sleep(2)
        again = await source.read()
        await source.ack(again)
        await source.close()
        return len(again)

    assert asyncio.run(scenario()) == 1


def test_a_bridge_without_its_topics_or_its_server_says_what_to_do(tmp_path: Path, kafka: str):
    path, topology = write_topology(tmp_path, kafka)
    raw = yaml.safe_load(path.read_text())
    dead = topology.ingest_topic().removesuffix("docs.raw") + "docs.dlq.bridge"
    raw["topics"][dead] = {"partitions": 1}
    raw["bridges"] = {"sources": {"r": {"kind": "redis", "url": f"redis://127.0.0.1:{REDIS_TEST_PORT + 7}/0",
                                        "stream": "s", "dead_letter": dead}}}
    path, topology = sandbox.write(raw, tmp_path, ROOT / "schemas")
    done = run_cli("-c", str(path), "bridge", "in", "r")  # before `topics apply`
    text = " ".join(done.stderr.split())
    assert done.returncode == 2 and f"{dead}, {topology.ingest_topic()} not on the cluster" in text, text
    assert "topics apply`" in text and "Traceback" not in text
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    done = run_cli("-c", str(path), "bridge", "in", "r")  # nothing listens on that port
    text = " ".join(done.stderr.split())
    assert done.returncode == 2 and "cannot open redis:s (ConnectionError" in text, text
    assert "`pipeline dev up --with redis`" in text and "Traceback" not in text


def test_status_shows_each_bridge_from_its_metrics_or_its_group(tmp_path: Path, kafka: str, redis_url: str):
    port = 6140 + PORT_SHIFT
    source, side = side_for("redis", {"redis": redis_url})
    path, topology = bridge_topology(tmp_path, kafka, "redis", {**source, "web_port": port})
    raw = yaml.safe_load(path.read_text())
    ingest, dead = topology.ingest_topic(), topology.bridges.sources["redis"].dead_letter
    raw["bridges"]["sources"]["silent"] = {**raw["bridges"]["sources"]["redis"], "web_port": port + 1}  # not running
    raw["bridges"]["sinks"] = {"out": {"kind": "redis", "url": redis_url, "stream": "out", "topic": ingest,
                                       "group": ingest + ".out", "dead_letter": dead}}
    path, topology = sandbox.write(raw, tmp_path, ROOT / "schemas")
    side.publish([doc(f"s-{i}") for i in range(10)] + [b"{not json"])
    log = tmp_path / "bridge-redis.log"
    bridge = start_bridge(path, "redis", tmp_path)
    try:
        wait_until(lambda: metric(port, "pipeline_bridge_messages_out_total") == 10, 60, "10 out", bridge, log)
        wait_until(lambda: metric(port, "pipeline_bridge_source_backlog") == 0, 20, "backlog 0", bridge, log)
        wait_until(lambda: f"message(s) to {ingest}" in log.read_text(), 10, "a progress line", bridge)
        done = run_cli("-c", str(path), "status", "--json")
        assert done.returncode == 0, done.stderr
        rows = {row["bridge"]: row for row in json.loads(done.stdout)["bridges"]}
        table = run_cli("-c", str(path), "status", "--interval", "0.5")
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(30)
    redis_row, silent, out = rows["redis"], rows["silent"], rows["out"]
    assert (redis_row["state"], redis_row["messages_in"], redis_row["consumed"], redis_row["backlog"]) == \
        ("up", 11, 10, 0)
    assert redis_row["route"] == f"redis:{source['stream']} -> {ingest}" and redis_row["direction"] == "in"
    assert (silent["state"], silent["backlog"], silent["consumed"]) == ("down", None, None)
    # the sink never ran: its group has no members, and the whole topic is its lag
    assert (out["direction"], out["members"], out["backlog"], out["consumed"]) == ("out", 0, 10, 0)
    assert all(r["dead_letters"] == 1 and r["shared"] for r in rows.values())  # one topic for all three
    text = " ".join(table.stderr.split())
    assert table.returncode == 0 and "bridges" in text and "down" in text and "11 / 10" in text, table.stderr
    assert "1 *" in text and "shared with other bridges or stages" in text
