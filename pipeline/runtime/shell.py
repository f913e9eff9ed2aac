"""The process shell every long-running process shares (stage workers, bridges, the gateway): /metrics, /healthz and
/ready on an aiohttp app, logging with the broker watch's filter, and SIGTERM/SIGINT turned into a graceful stop
with a deadline after which the process ends itself."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pipeline.runtime.outage import DEADLINE_EXIT, BrokerWatch, quiet_cancelled_threads, shutdown_timeout

log = logging.getLogger("pipeline.shell")
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
LEVELS = {"crit": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO", "debug": "DEBUG"}

# /ready's checks: booleans, or counts where zero means not ready (a stage's assigned partitions).
Checks = Callable[[], dict[str, bool | int]]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Shell:
    """One process: its metrics registry and readiness checks served as pages, its broker watch (when it talks
    to Kafka, exported as `broker_up`), and its stop: `on_stop` is called once on the first signal, and if
    the process is still running `timeout` seconds later it exits with DEADLINE_EXIT."""

    def __init__(self, name: str, registry: CollectorRegistry, ready: Checks, bootstrap: str | None = None,
                 broker_up: Any = None, timeout: float | None = None) -> None:
        self.name = name
        self.registry = registry
        self.ready = ready
        self.timeout = shutdown_timeout() if timeout is None else timeout
        on_change = broker_up.set if broker_up is not None else (lambda up: None)
        self.watch = BrokerWatch(bootstrap, on_change=on_change) if bootstrap else None
        self._deadline: threading.Timer | None = None
        self.stopping = False

    # --- pages -------------------------------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        """GET /metrics (Prometheus), /healthz (the event loop answers) and /ready (200 when every check is
        true, else 503, with the checks in the body) on an aiohttp app: the shell's own, or a Faust app's."""
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ready", self._ready)

    async def serve(self, port: int, host: str = "0.0.0.0") -> web.AppRunner:
        """The pages on their own server (processes without a Faust app); OSError when the port is taken."""
        app = web.Application()
        self.mount(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        return runner

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, dumps=_compact)

    async def _ready(self, request: web.Request) -> web.Response:
        checks = self.ready()
        ok = all(bool(value) for value in checks.values())
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503, dumps=_compact)

    # --- logging, the broker watch, signals -------------------------------------------------------------

    def setup_logging(self, level: str = "info") -> None:
        """Log to stderr at `level` (crit, error, warn, info, debug), through the broker watch's filter."""
        level = LEVELS.get(level, level.upper())
        logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
        if level != "DEBUG":  # Faust's and mode's services log every start and stop at info
            for name in ("faust", "mode"):
                logging.getLogger(name).setLevel(logging.WARNING)
        if self.watch is not None:
            for handler in logging.getLogger().handlers:
                handler.addFilter(self.watch)
        quiet_cancelled_threads()

    def start(self) -> None:
        if self.watch is not None:
            self.watch.start()

    def install_signals(self, on_stop: Callable[[], None]) -> None:
        """SIGTERM and SIGINT: start the deadline, then `on_stop()` (once); from the running event loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._signalled, sig, on_stop)
            except (RuntimeError, ValueError):  # not the main thread (tests, benchmarks): stop() is called instead
                pass

    def _signalled(self, sig: signal.Signals, on_stop: Callable[[], None]) -> None:
        if self.stopping:
            return
        log.info("%s: %s received, stopping (at most %.0f s)", self.name, sig.name, self.timeout)
        self.stopping = True
        if self.watch is not None:
            self.watch.stopping = True
        self._deadline = threading.Timer(self.timeout, self._exit_now)
        self._deadline.daemon = True
        self._deadline.start()
        on_stop()

    def _exit_now(self) -> None:
        broker = ""
        if self.watch is not None:
            broker = f" (broker {self.watch.bootstrap} {'reachable' if self.watch.up else 'unreachable'})"
        log.error("%s did not stop within %.0f s of the signal%s: exiting now; what it has not committed is "
                  "processed again when it restarts", self.name, self.timeout, broker)
        logging.shutdown()
        os._exit(DEADLINE_EXIT)

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self.watch is not None:
            self.watch.stop()
