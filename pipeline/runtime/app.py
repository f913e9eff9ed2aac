"""A stage worker: one Faust app whose agent receives whole batches from a librdkafka consumer (through a channel,
one event per batch), runs the stage on the model thread, and hands the result to delivery (pipeline.runtime.loop);
Faust keeps the agent, its web views and timers, and never touches Kafka itself."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import faust
from faust.app.base import BootStrategy

from pipeline.config import Topology
from pipeline.errors import PipelineError
from pipeline.kafka.reader import InputReader
from pipeline.kafka.transaction import Transactions, producer_settings
from pipeline.paths import cache_home
from pipeline.runtime.batch import BatchHandler, Take
from pipeline.runtime.loop import Flight, StageLoop, describe_batch
from pipeline.runtime.shell import Shell
from pipeline.runtime.stage import load_stage

log = logging.getLogger("pipeline.runtime")
EXIT_CRASH = 70  # EX_SOFTWARE: an unexpected error ended the worker; restart it


class NoKafka(BootStrategy):
    """Faust's services without its Kafka consumer, producer and tables: agents, timers, web views, sensors."""

    enable_kafka = False


class StageApp(faust.App):
    BootStrategy = NoKafka


class StageWorker:
    """One stage in this process: its Faust app and agent, its loop, its shell."""

    def __init__(self, topology: Topology, stage_name: str, replica: int = 0) -> None:
        self.stage = stage = load_stage(topology, stage_name)
        spec = stage.spec
        exactly_once = spec.delivery == "exactly-once"
        self.handler = BatchHandler(stage, topology,
                                    transactional=producer_settings(spec.group, replica) if exactly_once else None)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"stage-{stage_name}")
        self.loaded = False
        self.shell = Shell(f"stage {stage_name}", self.handler.m.registry, self._checks, topology.kafka.bootstrap,
                           self.handler.m.broker_up)
        self.app = self._build_app(spec.group, spec.web_port + 100 * replica)
        self.channel = self.app.channel(maxsize=spec.batch.depth + 1)
        self.app.agent(self.channel, name=f"pipeline.{stage_name}")(self._agent)
        reader = InputReader(topology, spec.input, spec.group)
        transactions = None
        if exactly_once:
            transactions = Transactions(self.handler.sender.producer, lambda: reader.group_metadata,
                                        self.handler.stopping)
        self.loop = StageLoop(self.handler, reader, spec.batch.depth, self._feed, crash, transactions,
                              spec.commit_interval_ms)
        self._aio: asyncio.AbstractEventLoop | None = None

    def _build_app(self, group: str, web_port: int) -> faust.App:
        datadir = cache_home() / "faust" / group
        datadir.parent.mkdir(parents=True, exist_ok=True)
        app = StageApp(group, store="memory://", web_enabled=True, web_port=web_port, datadir=str(datadir))
        for path, route in self.stage.routes().items():
            _json_page(app, path, route, self.in_model_thread)
        self.shell.mount(app.web.web_app)
        return app

    def _checks(self) -> dict[str, bool | int]:
        return {"model_loaded": self.loaded, "partitions": len(self.loop.reader.owned)}

    async def in_model_thread(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    def _feed(self, flight: Flight) -> None:
        """From the fetch thread: put the flight on the agent's channel (never full: the loop's depth bounds it)."""
        asyncio.run_coroutine_threadsafe(self.channel.send(value=flight), self._aio).result()

    async def _agent(self, stream: faust.StreamT) -> None:
        # Faust's agent supervisor must never recover from an error here (it would restart the agent and skip a
        # batch): anything but a shutdown's cancellation ends the process.
        group: list[Flight] = []
        try:
            async for _ in stream:  # one event per batch fetched; the loop hands over what waits for the model
                group = self.loop.next_group()
                if not group:
                    continue
                error = None
                try:
                    await self.in_model_thread(self.handler.process, [flight.take for flight in group])
                except Exception as exc:  # noqa: BLE001 - Stopping is expected; the loop crashes on the rest
                    error = exc
                self.loop.after_process(group, error)
                group = []
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the crash path is the point
            crash(exc, [flight.take for flight in group])

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT: set the stage up (before joining the group), run the loop, then stop it
        (the batches in hand finish and are committed) and stop the app. The stage's close() is not called: the
        store's would build its HNSW index on the way out, past the shutdown deadline; every batch was already
        flushed before its commit."""
        self._aio = asyncio.get_running_loop()
        stop = asyncio.Event()
        self.shell.install_signals(stop.set)
        self.shell.start()
        try:
            await self.app.start()
        except OSError as exc:
            raise PipelineError(f"stage {self.stage.name}: cannot serve on port {self.app.conf.web_port} "
                                f"({exc.strerror}): is another worker of it running? (--web-port)") from None
        self.app.flow_control.resume()  # Faust resumes its queues after a rebalance; with no Kafka, here
        try:
            await self.in_model_thread(self.stage.setup)
        except Exception as exc:  # noqa: BLE001 - a model that does not load: restart with backoff, say why
            crash(exc, [])
        self.loaded = True
        self.loop.start()
        await stop.wait()
        self.loop.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.loop.join)
        await self.app.stop()
        self.model_thread.shutdown(wait=False)
        self.shell.close()


def _json_page(app: faust.App, path: str, handler: Callable[[dict], dict], run: Callable) -> None:
    class JsonView(faust.web.View):
        async def post(self, request: faust.web.Request) -> faust.web.Response:
            try:
                body = await request.json()
            except ValueError:
                return self.json({"error": "the body must be JSON"}, status=400)
            try:
                return self.json(await run(handler, body))
            except ValueError as exc:
                return self.json({"error": str(exc)}, status=400)

    app.page(path, name=path.strip("/").replace("/", "-"))(JsonView)


def crash(exc: BaseException, takes: list[Take]) -> NoReturn:
    """Log one CRITICAL line and end the process now: no batch in hand is committed, so the restarted worker
    (supervisor, Kubernetes) processes them again from the last commit, with a fresh producer."""
    try:
        log.critical("unexpected %s: %s; batches in hand not committed (%s); exiting with status %d to restart "
                     "from the last commit", type(exc).__name__, exc, describe_batch(takes), EXIT_CRASH,
                     exc_info=None if isinstance(exc, PipelineError) else exc)
        logging.shutdown()  # flush every handler: os._exit skips it
        sys.stdout.flush()
        sys.stderr.flush()
    finally:  # whatever logging does (out of memory too), the process ends here
        os._exit(EXIT_CRASH)


def run_worker(topology: Topology, stage_name: str, replica: int = 0, loglevel: str = "info") -> None:
    """Run one stage in this process until SIGTERM/SIGINT, or until the shutdown deadline after them
    (PIPELINE_SHUTDOWN_TIMEOUT, default 25 s, under Kubernetes' 60 s grace period)."""
    worker = StageWorker(topology, stage_name, replica)
    worker.shell.setup_logging(loglevel)
    asyncio.run(worker.run())
