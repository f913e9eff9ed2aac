"""`pipeline dev`: the real local broker is idempotent, stops only its own process, and explains what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.dev.broker import DevBroker, admin_ready, server_properties
from tests.conftest import TEST_PORT, run_cli


def test_server_properties_are_single_node_and_small(tmp_path: Path) -> None:
    props = dict(line.split("=", 1) for line in server_properties(tmp_path, 9092, 9093).splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.num.partitions"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == str(tmp_path)


def test_up_twice_status_and_logs(kafka: str) -> None:
    home = os.environ.get("PIPELINE_TEST_DEV_HOME")
    if home is None:  # the tests run against an external cluster: there is no dev broker to check
        assert admin_ready(kafka)
        return
    env = {"PIPELINE_DEV_HOME": home}
    before = json.loads((Path(home) / "broker.json").read_text())["pid"]
    started = time.monotonic()
    again = run_cli("dev", "up", "--port", str(TEST_PORT), env=env)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert time.monotonic() - started < 30
    assert json.loads((Path(home) / "broker.json").read_text())["pid"] == before
    status = run_cli("dev", "status", "--port", str(TEST_PORT), env=env)
    assert status.returncode == 0
    assert f"127.0.0.1:{TEST_PORT}" in status.stderr and "answering" in status.stderr
    logs = run_cli("dev", "logs", "--port", str(TEST_PORT), "-n", "1000000", env=env)  # the whole log
    assert "Kafka Server started" in logs.stdout


def test_down_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        broker = DevBroker(home=tmp_path)
        broker.state_file.write_text(json.dumps({"pid": stranger.pid, "bootstrap": "127.0.0.1:1"}))
        assert broker.state() is None
        assert broker.down() is None
        assert stranger.poll() is None  # still running
    finally:
        stranger.kill()


def test_status_when_not_running(tmp_path: Path) -> None:
    done = run_cli("dev", "status", "--port", "39500", env={"PIPELINE_DEV_HOME": str(tmp_path)})
    assert done.returncode == 1
    assert "not running" in done.stderr


def test_missing_java_is_explained(tmp_path: Path) -> None:
    env = {"PIPELINE_DEV_HOME": str(tmp_path), "PATH": str(tmp_path)}  # nothing on PATH
    done = run_cli("dev", "up", "--port", "39500", env=env)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "`java` not found" in message and "--bootstrap HOST:PORT" in message
    assert "Traceback" not in done.stderr
