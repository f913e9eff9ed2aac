"""The online gateway's figures (`python -m bench.gateway`, or the `gateway` part of `python -m bench`): overhead
over in-process encoding at 1 client, the batching gain and p99 at 32 concurrent clients, and the same load
through the embed stage's per-request HTTP /embed route when a broker is given for that stage."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.context import Context
from bench.rows import Row, part
from pipeline.dev import sandbox  # noqa: E402
from pipeline.runtime.metrics import read_metrics
from pipeline.runtime.supervisor import spawn, terminate, worker_command
from pipeline.dev.servers import NATS, LocalServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("open a network connection read write file parse json string thread lock queue socket server client "
         "http url email path directory copy delete random number statistics regular expression unicode format "
         "archive csv xml binary encoding process async task parallel math function").split()


def queries(n: int, seed: int = 7) -> list[str]:
    """Short queries of 5 to 20 words, as people type them."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(n)]


def _quantiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args)} exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s:\n{log.read_text()[-2000:]}")


async def _concurrent(url: str, subject: str, texts: list[str], clients: int,
                      timeout: float = 60) -> tuple[float, list[float]]:
    """(seconds for all, each request's round trip) with `clients` callers each sending its share in turn."""
    from pipeline.gateway.client import connect, request

    nc = await connect(url)
    times: list[float] = []

    async def client(mine: list[str]) -> None:
        for text in mine:
            started = time.perf_counter()
            reply = await request(nc, url, subject, {"text": text}, timeout)
            times.append(time.perf_counter() - started)
            assert reply.error is None, reply.data

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(texts[i::clients]) for i in range(clients)))
        return time.perf_counter() - started, times
    finally:
        await nc.close()


async def _paired(url: str, subject: str, texts: list[str], model: Any, block: int = 20
                  ) -> tuple[list[float], list[float]]:
    """(in-process encode, round trip) of each text, in alternating blocks: `block` round trips one after the
    other, then the same texts encoded in this process, so that both see the same CPU speed (this VM's drifts by
    tens of percent over minutes). Only the first of a block can meet the other process's OpenMP threads still
    spinning; a pause after each text instead would measure the idle cores' wake-ups (about 0.6 ms a round
    trip here, for NATS alone)."""
    from pipeline.gateway.client import connect, request

    nc = await connect(url)
    singles: list[float] = []
    trips: list[float] = []
    try:
        for i in range(0, len(texts), block):
            for text in texts[i:i + block]:
                started = time.perf_counter()
                reply = await request(nc, url, subject, {"text": text}, 30)
                trips.append(time.perf_counter() - started)
                assert reply.error is None, reply.data
            singles += _in_process(model, texts[i:i + block])
        return singles, trips
    finally:
        await nc.close()


def _in_process(model: Any, texts: list[str]) -> list[float]:
    from stages.model import encode

    times = []
    for text in texts:
        started = time.perf_counter()
        encode(model, [text], batch_size=1)
        times.append(time.perf_counter() - started)
    return times


def _http_concurrent(port: int, texts: list[str], clients: int) -> tuple[float, list[float]]:
    from concurrent.futures import ThreadPoolExecutor

    def one(text: str) -> float:
        started = time.perf_counter()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/embed", json.dumps({"texts": [text]}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        return time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        times = list(pool.map(one, texts))
        return time.perf_counter() - started, times


def gateway_figures(requests: int = 640, clients: int = 32, device: str = "cpu", bootstrap: str | None = None,
                    nats_port: int = 24222, web_port: int = 26910, workdir: Path | None = None) -> dict[str, Any]:
    """Start a nats-server and a `pipeline serve` process, measure, stop them; the figures as a dict. With
    `bootstrap` (a Kafka broker), also run the embed stage and send the same load to its HTTP /embed route."""
    from stages.model import load_model

    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-gateway-"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw = sandbox.isolated(yaml.safe_load((ROOT / "topics.yaml").read_text()), f"bench-gw-{os.getpid()}.",
                           bootstrap or "127.0.0.1:1", port_shift=web_port - 6110, partitions=1)
    raw["gateway"].update(record_to=None, web_port=web_port)
    for stage in ("embed", "classify"):
        raw["stages"][stage]["options"]["device"] = device
    path, topology = sandbox.write(raw, workdir, ROOT / "schemas")
    gateway = topology.gateway
    texts = queries(requests)
    model = load_model(topology.stage("embed").options.get("model", "all-MiniLM-L6-v2"), device)
    measured = texts[:200]
    _in_process(model, measured)  # warm: on CPU the first pass of each shape pays for kernel selection (~3x)
    nats_server = LocalServer(NATS, workdir / "nats", nats_port)
    url = nats_server.up()["url"]
    log = workdir / "gateway.log"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(spawn([sys.executable, "-m", "pipeline", "-c", str(path), "serve", "--nats", url,
                            "--loglevel", "warning"], log))
        _wait_ready(f"http://127.0.0.1:{web_port}/ready", procs[0], log)
        subject = f"{gateway.prefix}.embed"
        asyncio.run(_concurrent(url, subject, measured, 1, 30))  # warm the connection and the model, as above
        before = read_metrics(f"http://127.0.0.1:{web_port}/metrics")
        singles, sequential = asyncio.run(_paired(url, subject, measured, model))
        after = read_metrics(f"http://127.0.0.1:{web_port}/metrics")
        overhead = [rtt - single for rtt, single in zip(sequential, singles)]
        model_ms = 1000 * ((after["pipeline_gateway_model_seconds_sum"] - before["pipeline_gateway_model_seconds_sum"])
                           / (after["pipeline_gateway_model_seconds_count"]
                              - before["pipeline_gateway_model_seconds_count"]))
        elapsed, loaded = asyncio.run(_concurrent(url, subject, texts, clients))
        # One at a time in process, just before and just after the load, against the CPU's drift.
        alone = singles + _in_process(model, measured)
        one_at_a_time_rate = len(alone) / sum(alone)
        figures: dict[str, Any] = {
            "device": device, "max_batch": gateway.max_batch, "max_wait_ms": gateway.max_wait_ms,
            "encode_in_process_1": _quantiles(singles),
            "overhead_1_client": _quantiles(overhead),
            # The same round trips less the gateway's own model time (its /metrics), means: what NATS, the
            # gateway's code and the client add, without the difference between two processes' model speed.
            "beyond_model_1_client_mean_ms": round(1000 * float(np.mean(sequential)) - model_ms, 2),
            "model_in_gateway_mean_ms": round(model_ms, 2),
            "round_trip_1_client": _quantiles(sequential),
            f"throughput_{clients}_clients_per_s": round(len(texts) / elapsed, 1),
            "in_process_one_at_a_time_per_s": round(one_at_a_time_rate, 1),
            "batching_gain": round(len(texts) / elapsed / one_at_a_time_rate, 2),
            f"round_trip_{clients}_clients": _quantiles(loaded),
        }
        figures["bare_responder"] = _bare_responder(url, measured, model, workdir, procs)
        if bootstrap:
            figures["http_embed_route"] = _http_route(path, topology, texts, clients, workdir, procs)
        return figures
    finally:
        terminate(procs, 30)
        nats_server.down()


def _bare_responder(url: str, texts: list[str], model: Any, workdir: Path,
                    procs: list[subprocess.Popen]) -> dict[str, Any]:
    """The same paired measurement against bench.nats_responder: what NATS, the other process and its model
    thread cost on this machine with no gateway code, the floor under the gateway's overhead."""
    subject = "bench.responder"
    log = workdir / "responder.log"
    procs.append(spawn([sys.executable, "-m", "bench.nats_responder", url, subject], log))
    deadline = time.monotonic() + 120
    while "ready" not in (log.read_text() if log.exists() else ""):
        if procs[-1].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bench.nats_responder did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    asyncio.run(_concurrent(url, subject, texts, 1, 30))  # warm, as the gateway
    singles, trips = asyncio.run(_paired(url, subject, texts, model))
    return {"overhead_1_client": _quantiles([t - s for t, s in zip(trips, singles)]),
            "round_trip_1_client": _quantiles(trips)}


def _http_route(path: Path, topology: Any, texts: list[str], clients: int, workdir: Path,
                procs: list[subprocess.Popen]) -> dict[str, Any]:
    """The same load through the embed stage's per-request /embed route (a Faust worker, so it needs Kafka)."""
    from pipeline.kafka import admin

    admin.create_missing(topology)
    log = workdir / "embed.log"
    procs.append(spawn(worker_command("embed", 0, path, None, "--loglevel", "warn"), log))
    port = topology.stage("embed").web_port
    _wait_ready(f"http://127.0.0.1:{port}/ready", procs[-1], log)
    _http_concurrent(port, texts[:20], 1)
    elapsed, times = _http_concurrent(port, texts, clients)
    return {f"throughput_{clients}_clients_per_s": round(len(texts) / elapsed, 1),
            f"round_trip_{clients}_clients": _quantiles(times)}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bootstrap", help="A Kafka broker for the embed stage (the HTTP /embed comparison).")
    parser.add_argument("--nats-port", type=int, default=24222)
    parser.add_argument("--web-port", type=int, default=26910)
    args = parser.parse_args()
    print(json.dumps(gateway_figures(args.requests, args.clients, args.device, args.bootstrap, args.nats_port,
                                     args.web_port), indent=2))


if __name__ == "__main__":
    main()


def _rows(results: dict[str, Any]) -> list[Row]:
    g = results["gateway"]
    clients = next(k for k in g if k.startswith("throughput_")).split("_")[1]
    rows = [
        Row("gateway", "NATS round trip minus in-process encode, 1 client, p50", g["overhead_1_client"]["p50_ms"],
            "ms", "limit 2 ms", 2.0, 1.0, at_most=True,
            note=f"p99 {g['overhead_1_client']['p99_ms']:.1f} ms; max_wait_ms {g['max_wait_ms']}"),
        Row("gateway", "the same for a bare NATS responder (model on a thread, nothing else), p50",
            g["bare_responder"]["overhead_1_client"]["p50_ms"], "ms", note="this machine's floor under the row above"),
        Row("gateway", "NATS round trip minus the gateway's own model time, 1 client, mean",
            g["beyond_model_1_client_mean_ms"], "ms", note=f"model in the gateway {g['model_in_gateway_mean_ms']:.1f} "
            f"ms, in process {g['encode_in_process_1']['p50_ms']:.1f} ms (p50)"),
        Row("gateway", f"throughput at {clients} concurrent clients", g[f"throughput_{clients}_clients_per_s"],
            "requests/s", "one at a time in process", g["in_process_one_at_a_time_per_s"], 3.0),
        Row("gateway", f"round trip at {clients} clients, p99", g[f"round_trip_{clients}_clients"]["p99_ms"], "ms",
            note=f"max_batch {g['max_batch']}, max_wait_ms {g['max_wait_ms']}"),
    ]
    if "http_embed_route" in g:
        http = g["http_embed_route"]
        rows.append(Row("gateway", f"the embed stage's HTTP /embed route at {clients} clients",
                        http[f"throughput_{clients}_clients_per_s"], "requests/s", "the gateway",
                        g[f"throughput_{clients}_clients_per_s"], note="for comparison"))
    return rows


@part("gateway", "The NATS gateway: overhead at one client, batching gain and p99 at 32 clients, against the embed "
      "stage's HTTP route.", rows=_rows, default=False)
def run_gateway(ctx: Context) -> dict[str, Any]:
    return gateway_figures(requests=160 if ctx.quick else 640, device=ctx.device, bootstrap=ctx.bench.bootstrap,
                           workdir=ctx.workdir / "gateway")

