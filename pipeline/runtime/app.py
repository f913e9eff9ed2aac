"""The stage runtime: a Faust app per stage that hands batches to the batch thread and acks only after."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import faust
from faust.tables import TableManager

from pipeline.config import Topology
from pipeline.kafka.offsets import stage_lag
from pipeline.kafka.security import faust_credentials
from pipeline.paths import cache_home
from pipeline.runtime import metrics
from pipeline.runtime.batch import BatchHandler, Raw, Stopping
from pipeline.runtime.outage import BrokerWatch, StageWorker, shutdown_timeout
from pipeline.runtime.stage import load_stage

log = logging.getLogger("pipeline.runtime")
LAG_INTERVAL = 5.0  # seconds between reads of the group's lag for /metrics
EXIT_CRASH = 70  # EX_SOFTWARE: an unexpected error ended the worker; restart it


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


class NoTablesManager(TableManager):
    """Faust's table manager without its one-second wait for tables to register: a stage has none, and the wait
    is half of a restarted worker's time to ready."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def build_app(topology: Topology, stage_name: str, replica: int = 0) -> faust.App:
    """The Faust app of one stage: its own consumer group, no topic declarations, no leader topic."""
    stage = load_stage(topology, stage_name)
    spec = stage.spec
    datadir = cache_home() / "faust" / spec.group
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        spec.group,
        broker=[f"kafka://{host}" for host in topology.kafka.bootstrap.split(",")],
        broker_credentials=faust_credentials(topology.kafka.security),
        store="memory://",
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        web_enabled=True,
        web_port=spec.web_port + 100 * replica,
        datadir=str(datadir),
        TableManager=NoTablesManager,
        broker_session_timeout=topology.kafka.session_timeout_s,  # heartbeats come from the consumer's own thread
    )
    topic = app.topic(spec.input, key_serializer="raw", value_serializer="raw", internal=False)
    executor = ThreadPoolExecutor(1, thread_name_prefix=f"stage-{stage_name}")
    handler = BatchHandler(stage, topology)
    ready = threading.Event()

    async def in_thread(fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    @app.agent(topic, name=f"pipeline.{stage_name}")
    async def run(stream: faust.StreamT) -> None:
        # Faust's agent supervisor must never recover from an error here: it would restart the agent and the
        # group's commit could move past the batch. Anything but a shutdown's cancellation ends the process.
        raws: list[Raw] = []
        try:
            if not ready.is_set():
                await in_thread(stage.setup)
                ready.set()
            within = spec.batch.max_wait_ms / 1000
            async for events in stream.noack_take(spec.batch.max_records, within=within):
                raws = [Raw(e.message.key, e.message.value, e.message.topic, e.message.partition,
                            e.message.offset, int(e.message.timestamp * 1000)) for e in events]
                await handle(stream, events, raws)
                raws = []
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the crash path is the point
            crash(stage_name, raws, exc)

    async def handle(stream: faust.StreamT, events: list, raws: list[Raw]) -> None:
        """Run the batch in the batch thread; ack its events only once run_batch returned."""
        job = asyncio.ensure_future(in_thread(handler.run_batch, raws))
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # Shutting down: finish the batch in hand and ack it, so the final commit includes it.
            handler.stopping.set()
            try:
                await job
            except Stopping:
                raise asyncio.CancelledError() from None
            for event in events:
                await stream.ack(event)
            raise
        for event in events:
            await stream.ack(event)

    @app.timer(interval=LAG_INTERVAL)
    async def measure_lag() -> None:
        """The group's lag per input partition, from the broker's offsets (off the event loop and the batch
        thread: the admin calls block)."""
        try:
            rows = await asyncio.get_running_loop().run_in_executor(None, stage_lag, topology, stage_name)
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the stage
            log.warning("stage %s: cannot read its lag: %s", stage_name, exc)
            return
        handler.m.set_lag({row.partition: row.lag for row in rows})

    for path, route in stage.routes().items():
        _json_page(app, path, route, in_thread)
    metrics.add_pages(app, ready, handler.m)
    app.stage_metrics = handler.m  # for run_worker's broker watch
    return app


def crash(stage_name: str, raws: list[Raw], exc: BaseException) -> NoReturn:
    """Log one CRITICAL line and end the process now, with no Faust shutdown (which would commit): the batch
    in hand is not acked, so the restarted worker (supervisor, Kubernetes) processes it again from the last
    commit, with a fresh producer."""
    try:
        log.critical("stage %s: unexpected %s: %s; batch not acked (%s); exiting with status %d to restart from "
                     "the last commit", stage_name, type(exc).__name__, exc, describe_batch(raws), EXIT_CRASH,
                     exc_info=exc)
        logging.shutdown()  # flush every handler: os._exit skips it
        sys.stdout.flush()
        sys.stderr.flush()
    finally:  # whatever logging does (out of memory too), the process ends here
        os._exit(EXIT_CRASH)


def describe_batch(raws: list[Raw]) -> str:
    """Where a batch came from, e.g. "docs.raw[0]@10..14, docs.raw[1]@3..7"."""
    if not raws:
        return "no batch in hand"
    spans: dict[tuple[str, int], list[int]] = {}
    for raw in raws:
        spans.setdefault((raw.topic, raw.partition), []).append(raw.offset)
    return ", ".join(f"{topic}[{partition}]@{min(offsets)}..{max(offsets)}"
                     for (topic, partition), offsets in sorted(spans.items()))


def run_worker(topology: Topology, stage_name: str, replica: int = 0, loglevel: str = "info") -> None:
    """Run one stage in this process until SIGTERM/SIGINT, or until the shutdown deadline after them (see
    pipeline.runtime.outage: PIPELINE_SHUTDOWN_TIMEOUT, default 25 s, under Kubernetes' 60 s grace period)."""
    timeout = shutdown_timeout()
    app = build_app(topology, stage_name, replica)
    watch = BrokerWatch(topology.kafka.bootstrap, on_change=app.stage_metrics.broker_up.set)
    watch.start()
    StageWorker(app, watch, timeout, loglevel=loglevel, quiet=True).execute_from_commandline()
