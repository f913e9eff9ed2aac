"""Bridge throughput (`python -m bench.bridges --bootstrap HOST:PORT`): messages/s of each source (`pipeline
bridge in`) and each sink (`pipeline bridge out`, reading the ingest topic `pipeline produce` filled), one process
each, next to `pipeline produce`'s rate in the same run. Starts its own redis-server, rabbitmq-server and
nats-server on loopback (ports --port-base .. +60); needs a running Kafka broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import typer
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.dev import sandbox  # noqa: E402
from pipeline.dev.servers import SERVERS, LocalServer  # noqa: E402
from pipeline.kafka.produce import produce_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("redis", "rabbitmq", "nats")


def _doc(i: int) -> bytes:
    return json.dumps({"doc_id": f"b-{i:07d}", "text": f"document number {i} " * 8, "source": "bench"}).encode()


async def _publish(kind: str, url: str, where: str, bodies: list[bytes]) -> None:
    if kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.from_url(url)
        for start in range(0, len(bodies), 1000):
            async with client.pipeline(transaction=False) as pipe:
                for body in bodies[start:start + 1000]:
                    pipe.xadd(where, {"body": body})
                await pipe.execute()
        await client.aclose()
    elif kind == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(where, durable=True)
        for start in range(0, len(bodies), 1000):
            await asyncio.gather(*(channel.default_exchange.publish(aio_pika.Message(b), routing_key=where)
                                   for b in bodies[start:start + 1000]))
        await connection.close()
    else:
        import nats

        client = await nats.connect(url)
        js = client.jetstream()
        await js.add_stream(name=where.upper().replace(".", "-"), subjects=[where])
        for start in range(0, len(bodies), 1000):
            await asyncio.gather(*(js.publish(where, b) for b in bodies[start:start + 1000]))
        await client.close()


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        pass
    return 0.0


def _timed(proc: subprocess.Popen, count, n: int, timeout: float) -> float:
    """Messages/s from the first message counted to the n-th (process start-up left out)."""
    deadline, first = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args)} exited {proc.returncode}")
        done = count()
        if done and first is None:
            first = (time.monotonic(), done)
        if done >= n:
            t0, c0 = first
            return (done - c0) / max(time.monotonic() - t0, 1e-3)
        time.sleep(0.1)
    raise RuntimeError(f"{' '.join(proc.args[-5:])}: not done within {timeout:.0f} s ({count()} of {n})")


def _sink_fields(kind: str, where: str) -> dict:
    return {"redis": {"stream": f"{where}.out", "maxlen": 10_000_000},
            "rabbitmq": {"exchange": "", "routing_key": f"{where}.out"},
            "nats": {"subject": f"{where}.out", "jetstream": True}}[kind]


async def _declare_sink_target(kind: str, url: str, where: str) -> None:
    """What a sink publishes into must exist first: RabbitMQ's queue, NATS' stream (Redis makes its stream)."""
    if kind == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(url)
        await (await connection.channel()).declare_queue(f"{where}.out", durable=True)
        await connection.close()
    elif kind == "nats":
        import nats

        client = await nats.connect(url)
        await client.jetstream().add_stream(name=f"{where}.out".upper().replace(".", "-"), subjects=[f"{where}.out"])
        await client.close()


def _rate(config: Path, command: list[str], port: int, series: str, n: int, log: Path) -> float:
    """Run `pipeline -c CONFIG COMMAND` until its /metrics series reaches n; its messages/s."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "-c", str(config), *command, "--loglevel",
                                 "warn"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        return _timed(proc, lambda: _metric(port, series), n, 600)
    finally:
        proc.terminate()
        proc.wait(30)


def main(bootstrap: str = typer.Option(..., help="A running Kafka broker (e.g. `pipeline dev up`)."),
         n: int = typer.Option(20_000, help="Messages per source and per sink."),
         port_base: int = typer.Option(17400, help="Ports for the servers this starts (base .. base+60)."),
         out: Path = typer.Option(None, help="Also write the figures as JSON here.")) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-bridges-"))
    prefix = f"bb{uuid.uuid4().hex[:6]}."
    raw = sandbox.isolated(yaml.safe_load((ROOT / "topics.yaml").read_text()), prefix, bootstrap, port_shift=0)
    ingest = raw["stages"]["preprocess"]["input"]
    dead = f"{prefix}docs.dlq.bridge"
    raw["topics"][dead] = {"partitions": 1}
    servers = {k: LocalServer(SERVERS[k], work, port_base + 10 * i) for i, k in enumerate(KINDS)}
    figures: dict[str, float] = {}
    try:
        urls = {k: s.up()["url"] for k, s in servers.items()}
        where = {k: f"bench.{uuid.uuid4().hex[:6]}" for k in KINDS}
        raw["bridges"] = {"sources": {}, "sinks": {}}
        for i, k in enumerate(KINDS):
            fields = {"redis": {"stream": where[k]}, "rabbitmq": {"queue": where[k]},
                      "nats": {"stream": where[k].upper().replace(".", "-"), "subject": where[k]}}[k]
            raw["bridges"]["sources"][k] = {"kind": k, "url": urls[k], "batch": 500, "dead_letter": dead,
                                            "web_port": port_base + 40 + i, **fields}
            # Each sink reads the ingest topic `pipeline produce` filled, in its own group, from the start.
            raw["bridges"]["sinks"][f"{k}-out"] = {"kind": k, "url": urls[k], "topic": ingest, "group": f"{prefix}sink-{k}",
                                          "dead_letter": dead, "web_port": port_base + 50 + i,
                                          **_sink_fields(k, where[k])}
        path, topology = sandbox.write(raw, work, ROOT / "schemas")
        subprocess.run([sys.executable, "-m", "pipeline", "-c", str(path), "topics", "apply"], check=True,
                       capture_output=True)
        docs = [_doc(i) for i in range(n)]
        jsonl = work / "docs.jsonl"
        jsonl.write_bytes(b"\n".join(docs) + b"\n")
        started = time.perf_counter()
        report = produce_file(topology, ingest, str(jsonl))
        figures["pipeline produce"] = report.sent / (time.perf_counter() - started)
        for i, k in enumerate(KINDS):
            asyncio.run(_publish(k, urls[k], where[k], docs))
            figures[f"source {k}"] = _rate(path, ["bridge", "in", k], port_base + 40 + i,
                                           "pipeline_bridge_messages_out_total", n, work / f"source-{k}.log")
        for i, k in enumerate(KINDS):
            asyncio.run(_declare_sink_target(k, urls[k], where[k]))
            # Counted after the other broker confirmed a batch (the stage runtime's records in, once processed).
            figures[f"sink {k}"] = _rate(path, ["bridge", "out", f"{k}-out"], port_base + 50 + i, "pipeline_events_in_total",
                                         n, work / f"sink-{k}.log")
    finally:
        for server in servers.values():
            server.down()
    produce = figures["pipeline produce"]
    print(f"{'what':<20} {'msg/s':>10} {'x produce':>10}   ({n:,} messages, {os.cpu_count()} cores)")
    for what, rate in figures.items():
        print(f"{what:<20} {rate:>10,.0f} {rate / produce:>10.2f}")
    if out:
        out.write_text(json.dumps({"n": n, "msg_per_s": figures}, indent=2))


if __name__ == "__main__":
    typer.run(main)
