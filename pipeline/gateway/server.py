"""The gateway process: subscribes to PREFIX.> in a NATS queue group, answers each request through its stage's
micro-batcher (and a forward route), replies in JSON or Avro, and records the exchange to Kafka."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nats
from nats.aio.msg import Msg

from pipeline.avro.codecs import schema_store
from pipeline.config import GatewayForward, GatewaySettings, Topology
from pipeline.errors import ConfigError, PipelineError
from pipeline.gateway import protocol
from pipeline.gateway.batcher import MicroBatcher
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.protocol import GatewayError, Request
from pipeline.gateway.recorder import Recorder
from pipeline.gateway.serving import load_servables
from pipeline.runtime.routes import StageUnreachable, call_route
from pipeline.runtime.shell import Shell

log = logging.getLogger("pipeline.gateway")
DRAIN_SECONDS = 10.0  # on SIGTERM: requests in hand get this long to be answered


def gateway_settings(topology: Topology) -> GatewaySettings:
    if topology.gateway is None or not topology.gateway.subjects:
        raise ConfigError(f"{topology.source} has no gateway section with subjects: add one (see the repository's "
                          "topics.yaml) to serve online requests")
    problems = topology.gateway_problems()
    if problems:
        raise ConfigError(f"{topology.source}: " + "; ".join(problems))
    return topology.gateway


class Gateway:
    """Stages in-process behind NATS subjects. `run()` serves until `stop()`."""

    def __init__(self, topology: Topology, servers: str | None = None, web_port: int | None = None,
                 record: bool = True) -> None:
        self.topology = topology
        self.settings = settings = gateway_settings(topology)
        self.servers = servers or settings.servers
        self.web_port = web_port if web_port is not None else settings.web_port
        self.m = GatewayMetrics()
        self.stages = load_servables(topology, [s.stage for s in settings.subjects.values()])
        # Avro replies are single-object encoded whatever the topology's framing: they need no registry.
        self.reply_codec = schema_store(topology).codec(protocol.EXCHANGE_SCHEMA)
        self.record = record and settings.record_to is not None
        self.recorder: Recorder | None = None
        # One model thread for every stage (they share the model and the cores); forward routes block on HTTP.
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="gateway-model")
        self.http_threads = ThreadPoolExecutor(16, thread_name_prefix="gateway-http")
        self.batchers: dict[str, MicroBatcher] = {}
        self.limits: dict[str, tuple[int, int]] = {}
        self.nc: Any = None
        self.loaded = False
        self.shell = Shell("gateway", self.m.registry, self.ready, topology.kafka.bootstrap if self.record else None,
                           self.m.broker_up)
        self._tasks: set[asyncio.Task] = set()
        self._stop: asyncio.Event | None = None

    @property
    def subject_prefix(self) -> str:
        return self.settings.prefix + "."

    def setup(self) -> None:
        """Load every stage's model (each stage's own setup) and size the batchers; before serving."""
        # On the model thread, as the stage runtime does on its batch thread: torch's OpenMP team belongs to the
        # thread that calls it, and passes ran ~1.2x slower on the model thread after a warm-up on another one.
        self.model_thread.submit(self._setup_stages).result()
        if self.record:
            self.recorder = Recorder(self.topology, self.settings.record_to, self.m)
        self.loaded = True

    def _setup_stages(self) -> None:
        for name, stage in self.stages.items():
            stage.setup()
            self.limits[name] = stage.token_limits()

    def ready(self) -> dict[str, bool]:
        return {"models_loaded": self.loaded, "nats_connected": bool(self.nc and self.nc.is_connected)}

    async def _in_model_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def run(self) -> None:
        """Connect, subscribe and serve until stop() (or SIGTERM / SIGINT); then answer what is in hand."""
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.shell.install_signals(self._stop.set)
        try:
            runner = await self.shell.serve(self.web_port)
        except OSError as exc:
            raise PipelineError(f"gateway: cannot serve /metrics on port {self.web_port} ({exc.strerror}): give "
                                "another with --web-port") from None
        self.shell.start()
        try:
            for name, stage in self.stages.items():
                self.batchers[name] = MicroBatcher(
                    name, stage.serve, self._in_model_thread, self.settings.max_batch, self.settings.max_wait_ms,
                    self.limits[name][1], self.m)
            workers = [asyncio.create_task(b.run()) for b in self.batchers.values()]
            try:
                self.nc = await nats.connect(self.servers.split(","), name="pipeline-gateway",
                                             max_reconnect_attempts=-1, reconnect_time_wait=1,
                                             connect_timeout=5, allow_reconnect=True, error_cb=self._nats_error)
            except Exception as exc:  # noqa: BLE001 - nats-py raises several kinds for "cannot connect"
                raise PipelineError(f"gateway: cannot reach NATS at {self.servers} ({type(exc).__name__}: {exc}); "
                                    "start one with `pipeline dev up --with nats`, or give --nats URL") from None
            sub = await self.nc.subscribe(f"{self.settings.prefix}.>", queue=self.settings.queue_group,
                                          cb=self._on_message)
            log.info("serving %s.{%s} in queue group %s on %s", self.settings.prefix,
                     ",".join(self.settings.subjects), self.settings.queue_group, self.servers)
            await self._stop.wait()
            await sub.unsubscribe()  # replicas take new requests from here on
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=DRAIN_SECONDS)
            for worker in workers:
                worker.cancel()
            await self.nc.close()
        finally:
            await runner.cleanup()
            self.shell.close()
            if self.recorder is not None:
                await loop.run_in_executor(None, self.recorder.close)
            self.model_thread.shutdown(wait=False)
            self.http_threads.shutdown(wait=False)

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("NATS at %s: %s (retrying; `pipeline dev up --with nats` starts one)", self.servers, exc)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _on_message(self, msg: Msg) -> None:
        # nats-py awaits one callback at a time per subscription: hand the request off at once.
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        name = msg.subject[len(self.subject_prefix):]
        request: Request | None = None
        result: dict[str, Any] | None = None
        error: GatewayError | None = None
        started = time.monotonic()
        try:
            if name not in self.settings.subjects:
                known = ", ".join(self.subject_prefix + s for s in self.settings.subjects)
                raise GatewayError("unknown-subject", f"no subject {msg.subject} (this gateway answers {known})")
            request = protocol.parse(msg.subject, name, msg.data, msg.headers)
            result = await self._result(request)
        except GatewayError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a request always gets an answer
            log.exception("request on %s failed", msg.subject)
            error = GatewayError("internal", f"{type(exc).__name__}: {exc}")
        latency_ms = (time.monotonic() - (request.started if request else started)) * 1000
        record = protocol.exchange(request, result, error, latency_ms) if request else None
        if error is None:
            body, headers = protocol.ok_reply(request, result, record, self.reply_codec)
        else:
            body, headers = protocol.error_reply(error, request and request.request_id,
                                                 request and request.trace_id)
        subject = name if name in self.settings.subjects else "unknown"
        if msg.reply:
            try:
                await self.nc.publish(msg.reply, body, headers=headers)
            except Exception as exc:  # noqa: BLE001 - connection lost: the client times out and retries
                log.warning("cannot reply on %s: %s", msg.subject, exc)
        self.m.requests.labels(subject, error.code if error else "ok").inc()
        self.m.latency.labels(subject).observe(latency_ms / 1000)
        if record is not None and self.recorder is not None:
            self.recorder.record(record)

    async def _result(self, request: Request) -> dict[str, Any]:
        subject = self.settings.subjects[request.name]
        if len(request.text) > self.settings.max_chars:
            raise GatewayError("text-too-long", f"the text has {len(request.text)} characters; this gateway takes "
                                                f"at most {self.settings.max_chars} (gateway.max_chars)")
        stage = self.stages[subject.stage]
        tokens = stage.token_counts([request.text])[0]
        limit = self.limits[subject.stage][0]
        if tokens > limit:
            raise GatewayError("text-too-long", f"the text is {tokens} word pieces; the model of stage "
                                                f"{subject.stage} takes at most {limit}: send shorter text (the "
                                                "pipeline's preprocess stage splits documents into passages)")
        result = await self.batchers[subject.stage].submit(request.text, tokens, request.deadline)
        if subject.forward is not None:
            result = await self._forward(subject.forward, request, result)
        return result

    async def _forward(self, forward: GatewayForward, request: Request, result: dict[str, Any]) -> dict[str, Any]:
        """POST the request's other fields with the result to a running stage's route; its answer is the result."""
        remaining = 30.0 if request.deadline is None else request.deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayError("deadline-exceeded", f"its deadline passed before stage {forward.stage} was asked")
        body = {**request.extra, **result}
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self.http_threads, lambda: call_route(self.topology, forward.stage, forward.route, body,
                                                      host=forward.host, timeout=remaining))
        except StageUnreachable as exc:
            if " HTTP 400 " in f" {exc} ":
                raise GatewayError("bad-request", f"stage {forward.stage} refused it: {exc}") from None
            raise GatewayError("unavailable", f"stage {forward.stage} does not answer ({exc}): is it running? "
                                              f"`pipeline run {forward.stage}`") from None
        return {"model_id": result.get("model_id"), **answer}


def run_gateway(topology: Topology, servers: str | None = None, web_port: int | None = None,
                loglevel: str = "info") -> None:
    """Load the models, then serve until SIGTERM or Ctrl-C."""
    gateway = Gateway(topology, servers, web_port)
    gateway.shell.setup_logging(loglevel)
    gateway.setup()
    asyncio.run(gateway.run())
