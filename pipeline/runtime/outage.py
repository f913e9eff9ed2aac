"""A process during a broker outage: one log line per change of connection state, a pipeline_broker_up gauge,
connection-error noise from the Kafka clients summarised instead of logged thousands of times, and the deadline
after SIGTERM (pipeline.runtime.shell) so a stage whose broker is gone still exits within its grace period."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pipeline.errors import ConfigError

log = logging.getLogger("pipeline.runtime.outage")

PROBE_INTERVAL = 1.0  # seconds between connection probes of the bootstrap address
SUMMARY_INTERVAL = 30.0  # seconds between "still unreachable" lines, and at most one connection error per this while up
# The Deployment's grace period is 60 s (pipeline/deploy/render.py); the deadline leaves room to spare.
DEFAULT_SHUTDOWN_TIMEOUT = 25.0
SHUTDOWN_TIMEOUT_ENV = "PIPELINE_SHUTDOWN_TIMEOUT"
DEADLINE_EXIT = 75  # EX_TEMPFAIL: stopped before its last commit; what it did not commit is processed again

# Lines (lower case) that librdkafka (our consumers, producers and admin clients) and aiokafka (where a user's own
# Faust code still uses it) write for every failed connection attempt or request to an unreachable broker.
CONNECTION_ERRORS = (
    "connect call failed", "connection refused", "unable connect to node", "unable to update metadata",
    "unable to request metadata", "nodenotreadyerror", "groupcoordinatornotavailable", "kafkaconnectionerror",
    "brokers are down", "broker transport failure", "code=_transport", "connection reset by peer",
)
PENDING_TASK = "task was destroyed but it is pending"


def shutdown_timeout() -> float:
    """Seconds a stage may take to stop after SIGTERM: PIPELINE_SHUTDOWN_TIMEOUT or 25."""
    raw = os.environ.get(SHUTDOWN_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_SHUTDOWN_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{SHUTDOWN_TIMEOUT_ENV} must be a number of seconds > 0, not '{raw}'")
    return value


def _addresses(bootstrap: str, default_port: int = 9092) -> list[tuple[str, int]]:
    """HOST:PORT,... (or SCHEME://HOST:PORT,... such as NATS URLs) as (host, port) pairs; a missing port is
    `default_port` (Kafka's 9092)."""
    found = []
    for item in bootstrap.split(","):
        host, sep, port = item.strip().split("://")[-1].rpartition(":")
        if not sep:
            host, port = port, str(default_port)
        if port.isdigit():
            found.append((host.strip("[]") or "127.0.0.1", int(port)))
    return found


def tcp_reachable(bootstrap: str, timeout: float = 1.0, default_port: int = 9092) -> bool:
    """True when some bootstrap address accepts a TCP connection (cheap, and silent unlike a Kafka client)."""
    for host, port in _addresses(bootstrap, default_port):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


class BrokerWatch(logging.Filter):
    """The broker's connection state, probed every PROBE_INTERVAL; also a logging filter that counts the clients'
    connection errors and lets at most one through per SUMMARY_INTERVAL while the broker is up, none while it is
    down (the state lines say it all), and drops asyncio's pending-task errors once the process stops."""

    def __init__(self, bootstrap: str, on_change: Callable[[bool], None] = lambda up: None,
                 probe: Callable[[str], bool] = tcp_reachable, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.on_change = on_change
        self.probe = probe
        self.clock = clock
        self.up = True
        self.stopping = False
        self.suppressed = 0  # connection errors not logged since the last line that reported them
        self._lock = threading.Lock()
        self._down_at = 0.0
        self._down_wall = 0.0
        self._last_summary = 0.0
        self._last_passed = float("-inf")
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == log.name:
            return True
        message = record.getMessage().lower()
        if self.stopping and PENDING_TASK in message:
            return False  # the loop closes with the client's retry tasks still pending: harmless at exit
        if not any(pattern in message for pattern in CONNECTION_ERRORS):
            return True
        with self._lock:
            now = self.clock()
            if self.up and now - self._last_passed >= SUMMARY_INTERVAL:
                self._last_passed = now
                return True
            self.suppressed += 1
            return False

    def check(self) -> None:
        """Probe once; log a change of state (and call on_change), or a summary of the suppressed errors when
        one is due (every SUMMARY_INTERVAL while down; while up only if there were any)."""
        up = self.probe(self.bootstrap)
        with self._lock:
            now, was_up = self.clock(), self.up
            self.up = up
            if was_up and not up:
                self._down_at, self._down_wall = now, time.time()
            summary_due = now - self._last_summary >= SUMMARY_INTERVAL and (not up or self.suppressed > 0)
            if was_up == up and not summary_due:
                return
            suppressed, self.suppressed, self._last_summary = self.suppressed, 0, now
        since = datetime.fromtimestamp(self._down_wall).isoformat(timespec="seconds")
        if was_up and not up:
            log.warning("broker %s unreachable since %s (%d connection errors so far); further errors are "
                        "counted, not logged, until it is back", self.bootstrap, since, suppressed)
        elif up and not was_up:
            log.warning("broker %s reachable again after %.0f s (%d connection errors suppressed)",
                        self.bootstrap, now - self._down_at, suppressed)
        elif not up:
            log.warning("broker %s still unreachable (since %s, %.0f s); %d connection errors suppressed",
                        self.bootstrap, since, now - self._down_at, suppressed)
        else:
            log.warning("%d more connection errors suppressed (broker %s reachable)", suppressed, self.bootstrap)
        if was_up != up:
            self.on_change(up)

    def start(self) -> None:
        """Probe now (so the gauge is right from the start), then every PROBE_INTERVAL in a daemon thread."""
        self.on_change(self.up)
        self.check()
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(PROBE_INTERVAL):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watch must never end the stage
                log.exception("broker watch failed")

    def stop(self) -> None:
        self._done.set()


def quiet_cancelled_threads() -> None:
    """At shutdown with the broker gone, a client thread may end on a CancelledError (its request was cancelled by
    the stop): one debug line, not a traceback. Every other thread error keeps its traceback."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, asyncio.CancelledError):
            log.debug("thread %s ended by cancellation at shutdown", args.thread.name if args.thread else "?")
            return
        default(args)

    threading.excepthook = hook
