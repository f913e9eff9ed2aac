"""The benchmark's real parts: a broker, private topologies on it, stage processes, and their /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from pipeline.kafka import admin
from pipeline.dev import sandbox
from pipeline.kafka.sender import Sender
from pipeline.config import Topology
from pipeline.dev.broker import DevBroker
from pipeline.errors import PipelineError
from pipeline.runtime.metrics import scrape
from pipeline.avro.codecs import codec_for
from pipeline.runtime.supervisor import spawn, terminate
from pipeline.runtime.routes import StageUnreachable, call_route

ROOT = Path(__file__).resolve().parents[1]


class Bench:
    """Where one benchmark run works: its folder, the broker, and the stage processes it started."""

    def __init__(self, workdir: Path, bootstrap: str | None, broker_port: int, device: str,
                 port_shift: int = 10000) -> None:
        self.workdir = workdir
        self.device = device
        self.port_shift = port_shift  # added to every stage's web port, away from a running pipeline's
        self.broker: DevBroker | None = None
        if bootstrap is None:
            self.broker = DevBroker(home=workdir / "broker", port=broker_port, controller_port=broker_port + 1)
            bootstrap = self.broker.up()["bootstrap"]
        self.bootstrap = bootstrap
        self.procs: dict[str, subprocess.Popen] = {}

    def close(self) -> None:
        self.stop()
        if self.broker is not None:
            self.broker.down()

    def topology(self, name: str, partitions: int = 3, embed: dict[str, Any] | None = None,
                 batch: dict[str, Any] | None = None, delivery: str | None = None) -> tuple[Path, Topology]:
        """A fresh copy of topics.yaml with its own topics, groups and Qdrant folder, applied on the broker;
        `embed` overrides the embed stage's options (max_tokens, max_batch), its take grown to fit max_batch;
        `batch` overrides every stage's batch settings (e.g. {"depth": 1}); `delivery` every stage's delivery."""
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        raw = sandbox.isolated(yaml.safe_load((ROOT / "topics.yaml").read_text()),
                               f"bench-{uuid.uuid4().hex[:6]}.", self.bootstrap, self.port_shift,
                               partitions=partitions)
        raw["stages"]["store"]["options"]["path"] = str(folder / "qdrant")
        embed_stage = raw["stages"]["embed"]
        embed_stage["options"]["device"] = self.device
        if embed:
            embed_stage["options"].update(embed)
            take = embed_stage.setdefault("batch", {})
            take["max_records"] = max(take.get("max_records", 1), embed.get("max_batch", 1))
        for stage in raw["stages"].values():
            stage.setdefault("batch", {}).update(batch or {})
            if delivery:
                stage["delivery"] = delivery
        path, topology = sandbox.write(raw, folder, ROOT / "schemas")
        admin.create_missing(topology)
        return path, topology

    def fill(self, topology: Topology, topic: str, records: list[dict[str, Any]]) -> None:
        """Produce `records` to `topic` (Avro, keyed as the topic says) and wait until all are acknowledged."""
        self.send(topology, topic, self.encode(topology, topic, records))

    def encode(self, topology: Topology, topic: str, records: list[dict[str, Any]]
               ) -> list[tuple[bytes | None, bytes]]:
        """(key, value) pairs of `records` as `topic` takes them, ready to send."""
        codec = codec_for(topology, topic)
        key_field = topology.topic(topic).key_field
        return [(str(r[key_field]).encode() if key_field else None, codec.encode(r, validate=False))
                for r in records]

    def send(self, topology: Topology, topic: str, pairs: list[tuple[bytes | None, bytes]]) -> None:
        """Produce encoded (key, value) pairs and wait until all are acknowledged."""
        sender = Sender(topology)
        for key, value in pairs:
            sender.send(topic, value, key)
        barrier = sender.flush(60)
        if not barrier.ok:
            raise PipelineError(f"records to {topic}: {barrier.unacked} not acknowledged within 60 s, "
                                f"{len(barrier.failures)} failed")

    def start(self, path: Path, stage: str, name: str | None = None, env: dict[str, str] | None = None) -> None:
        """Run `stage` of the topology at `path` in its own process; `env` adds variables (Faust reads its
        settings from some, e.g. BROKER_MAX_POLL_RECORDS)."""
        self.spawn(name or stage, ["-m", "pipeline", "-c", str(path), "run", stage, "--loglevel", "warn"], env)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """`python ARGS` in the repository, logging to the run's folder, stopped by stop()."""
        self.procs[name] = spawn([sys.executable, *args], self.workdir / "logs" / f"{name}.log", env=env)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.workdir / "logs" / f"{name}.log").read_text()[-2000:]
                raise PipelineError(f"stage process {name} exited ({proc.returncode}):\n{tail}")

    def wait_ready(self, topology: Topology, stages: list[str], timeout: float = 300) -> float:
        """Poll each stage's /ready until all answer 200; the time when the last one did."""
        deadline = time.monotonic() + timeout
        pending = list(stages)
        while pending:
            self.check_alive()
            try:
                call_route(topology, pending[0], "/ready", timeout=2)
                pending.pop(0)
                continue
            except StageUnreachable:
                pass
            if time.monotonic() > deadline:
                raise PipelineError(f"stages {', '.join(pending)} not ready within {timeout:.0f} s")
            time.sleep(0.02)
        return time.time()

    def wait_count(self, topology: Topology, stage: str, count: int, timeout: float = 1800, every: float = 0.25
                   ) -> float:
        """Wait until the stage has handled `count` records; the time its batch that got there was done.
        Polls gently (4/s by default) so that watching does not slow down what is watched."""
        deadline = time.monotonic() + timeout
        while True:
            m = scrape(call_route(topology, stage, "/metrics"))
            if m.get("pipeline_events_in_total", 0) >= count:
                return m["pipeline_last_batch_timestamp_seconds"]
            self.check_alive()
            if time.monotonic() > deadline:
                raise PipelineError(f"{stage} did not get through {count} records within {timeout:.0f} s")
            time.sleep(every)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each stage process and by the broker this run started."""
        pids = {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}
        state = self.broker.state() if self.broker else None
        if state:
            pids["kafka broker"] = state["pid"]
        used = {}
        for name, pid in pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return used

    def stop(self) -> None:
        terminate(self.procs.values(), 60)
        self.procs.clear()
