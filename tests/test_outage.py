"""A broker outage: state lines instead of thousands of connection errors, pipeline_broker_up, and a stage that
exits within its shutdown deadline after SIGTERM while its broker is gone."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.deploy.render import GRACE_SECONDS
from pipeline.errors import ConfigError
from pipeline.runtime import outage
from pipeline.runtime.metrics import scrape
from pipeline.runtime.outage import CONNECTION_ERRORS, DEADLINE_EXIT, BrokerWatch, shutdown_timeout
from tests.conftest import ROOT, lag, run_cli, start_stage, wait_for, write_topology


def _record(message: str, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, None)


REFUSED = "Unable connect to node with id 1: [Errno 111] Connect call failed ('127.0.0.1', 9092)"
RDKAFKA = ("FAIL [rdkafka#producer-1] 127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: "
           "Connection refused (after 0ms in state CONNECT)")


class Fake:
    def __init__(self) -> None:
        self.up, self.now, self.changes = True, 1000.0, []


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
def watch(fake: Fake) -> BrokerWatch:
    return BrokerWatch("127.0.0.1:9092", on_change=fake.changes.append, probe=lambda _: fake.up,
                       clock=lambda: fake.now)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline.runtime.outage"]


def test_state_changes_are_logged_once_and_errors_summarised(watch: BrokerWatch, fake: Fake,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pipeline.runtime.outage")
    watch.start()
    watch.stop()
    assert fake.changes == [True] and _lines(caplog) == []
    assert watch.filter(_record("Heartbeat sent")) is True  # not a connection error
    # Up: the first connection error shows (it may be news), the next ones within the interval are counted.
    assert watch.filter(_record(REFUSED)) is True
    assert watch.filter(_record(RDKAFKA, "pipeline.librdkafka")) is False
    fake.up = False
    watch.check()
    assert fake.changes == [True, False]
    assert len(_lines(caplog)) == 1 and "unreachable since" in _lines(caplog)[0]
    assert "(1 connection errors so far)" in _lines(caplog)[0]
    assert [watch.filter(_record(REFUSED)) for _ in range(500)] == [False] * 500
    fake.now += 10
    watch.check()
    assert len(_lines(caplog)) == 1  # no summary before the interval
    fake.now += 20
    watch.check()
    assert len(_lines(caplog)) == 2 and "still unreachable" in _lines(caplog)[1]
    assert "500 connection errors suppressed" in _lines(caplog)[1]
    assert watch.filter(_record(RDKAFKA, "pipeline.librdkafka")) is False
    fake.now += 7
    fake.up = True
    watch.check()
    assert fake.changes == [True, False, True]
    assert _lines(caplog)[2] == "broker 127.0.0.1:9092 reachable again after 37 s (1 connection errors suppressed)"
    fake.now += 60
    watch.check()
    assert len(_lines(caplog)) == 3  # up and nothing suppressed: quiet


def test_bootstrap_addresses_are_parsed() -> None:
    assert outage._addresses("a:1, b:2,c,[::1]:3") == [("a", 1), ("b", 2), ("c", 9092), ("::1", 3)]
    assert outage._addresses("nats://a:4223,nats://b", 4222) == [("a", 4223), ("b", 4222)]


def test_pending_task_errors_are_dropped_only_when_stopping(watch: BrokerWatch) -> None:
    pending = _record("Task was destroyed but it is pending!", "asyncio")
    assert watch.filter(pending) is True
    watch.stopping = True
    assert watch.filter(pending) is False
    assert watch.filter(_record("something else", "asyncio")) is True


def test_shutdown_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_SHUTDOWN_TIMEOUT", raising=False)
    assert shutdown_timeout() == 25.0
    assert shutdown_timeout() <= GRACE_SECONDS / 2  # room left for the final commit and the process's exit
    monkeypatch.setenv("PIPELINE_SHUTDOWN_TIMEOUT", "7.5")
    assert shutdown_timeout() == 7.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("PIPELINE_SHUTDOWN_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="PIPELINE_SHUTDOWN_TIMEOUT"):
            shutdown_timeout()


def _free_port_pair() -> int:
    """A port P with P+1 also free on 127.0.0.1 (the broker and its controller)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port > 65000:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two free adjacent ports")


def _broker_up(web_port: int) -> float | None:
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=3).read().decode()
    except OSError:
        return None
    return scrape(page).get("pipeline_broker_up")


def _connection_errors(log: str) -> int:
    return sum(1 for line in log.lower().splitlines() if any(p in line for p in CONNECTION_ERRORS))


def test_sigterm_during_an_outage_exits_within_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A broker of this test's own: stopping the session's shared one would break the other tests.
    port = _free_port_pair()
    env = {"PIPELINE_DEV_HOME": str(tmp_path / "broker")}
    started = run_cli("dev", "up", "--port", str(port), env=env)
    assert started.returncode == 0, started.stderr
    procs: dict = {}
    try:
        path, topo = write_topology(tmp_path, f"127.0.0.1:{port}", partitions=1)
        assert run_cli("-c", str(path), "topics", "apply").returncode == 0
        docs = [json.loads(line) for line in (ROOT / "stages/data/sample.jsonl").read_text().splitlines()[:3]]
        source = tmp_path / "docs.jsonl"
        source.write_text("".join(json.dumps(d) + "\n" for d in docs))
        assert run_cli("-c", str(path), "produce", "-t", topo.stages["preprocess"].input, str(source)).returncode == 0
        deadline = 8.0
        monkeypatch.setenv("PIPELINE_SHUTDOWN_TIMEOUT", str(deadline))
        logs = tmp_path / "logs"
        logs.mkdir()
        procs["preprocess"] = start_stage(path, "preprocess", logs)
        web_port = topo.stages["preprocess"].web_port
        wait_for(lambda: lag(topo, ["preprocess"]) == 0, 120, "preprocess", procs, logs)
        wait_for(lambda: _broker_up(web_port) == 1, 30, "broker_up 1", procs, logs)

        assert run_cli("dev", "down", "--port", str(port), env=env).returncode == 0
        down_at = time.monotonic()
        wait_for(lambda: _broker_up(web_port) == 0, 20, "broker_up 0", procs, logs)
        log_file = logs / "preprocess.log"
        wait_for(lambda: "unreachable since" in log_file.read_text(), 20, "the outage line", procs, logs)
        # Let the clients retry for a while: before, this wrote about 80 connection-error lines a second.
        time.sleep(max(0.0, 12 - (time.monotonic() - down_at)))

        procs["preprocess"].send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = procs["preprocess"].wait(deadline + 20)
        took = time.monotonic() - signalled
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        run_cli("dev", "down", "--port", str(port), env=env)
    log = log_file.read_text()
    # Everything was committed before the outage: the stage may leave at once (0), or hang on the gone broker
    # until the deadline ends it (75); never later.
    assert code in (0, DEADLINE_EXIT), log[-3000:]
    assert took < deadline + 5, took
    if code == DEADLINE_EXIT:
        assert deadline - 1 < took and "did not stop within 8 s of the signal" in log
    assert log.count("unreachable since") == 1
    assert _connection_errors(log) <= 3, log[-3000:]
    assert "Task was destroyed but it is pending" not in log
    assert "Traceback" not in log
    assert len(log.splitlines()) < 150  # the whole run, start-up and shutdown included
    assert outage.SUMMARY_INTERVAL == 30  # the test's outage (~20 s) is shorter: no summary line expected
    assert "still unreachable" not in log


HANGS_ON_STOP = """
import asyncio, sys
from prometheus_client import CollectorRegistry
from pipeline.runtime.shell import Shell

async def main():
    shell = Shell("hanging", CollectorRegistry(), lambda: {}, timeout=float(sys.argv[1]))
    shell.setup_logging("info")
    stopped = asyncio.Event()
    shell.install_signals(stopped.set)
    print("ready", flush=True)
    await stopped.wait()
    await asyncio.sleep(3600)  # a stop that never ends: only the deadline ends this process

asyncio.run(main())
"""


def test_the_shell_ends_a_process_that_does_not_stop_by_its_deadline(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HANGS_ON_STOP, "1.5"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = proc.wait(20)
    took = time.monotonic() - signalled
    log = proc.stderr.read()
    assert code == DEADLINE_EXIT, log
    assert 1.0 < took < 6, took
    assert "SIGTERM received, stopping (at most 2 s)" in log and "did not stop within 2 s of the signal" in log
