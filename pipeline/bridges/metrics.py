"""A source bridge's Prometheus series and its /metrics, /healthz and /ready pages (aiohttp)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class BridgeMetrics:
    """The series of one bridge process; labelled by bridge name and source kind."""

    def __init__(self, bridge: str, kind: str) -> None:
        self.registry = CollectorRegistry()

        def series(cls, name: str, doc: str):
            return cls(name, doc, ["bridge", "kind"], registry=self.registry).labels(bridge=bridge, kind=kind)

        self.messages_in = series(Counter, "pipeline_bridge_messages_in", "Messages read from the source")
        self.messages_out = series(Counter, "pipeline_bridge_messages_out", "Records Kafka acknowledged on the "
                                   "target topic")
        self.dead_letters = series(Counter, "pipeline_bridge_dead_letters", "Messages sent to the dead-letter topic")
        self.acked = series(Counter, "pipeline_bridge_acked", "Messages acknowledged at the source")
        self.retries = series(Counter, "pipeline_bridge_retries", "Reads, sends or acks tried again after a failure")
        self.stuck = series(Gauge, "pipeline_bridge_stuck", "1 while the bridge retries the source or Kafka")
        self.backlog = series(Gauge, "pipeline_bridge_source_backlog", "Messages waiting at the source: JetStream "
                              "num_pending + ack pending, RabbitMQ queue depth, Redis pending + lag")
        self.given_up = series(Counter, "pipeline_bridge_given_up", "Messages Kafka refused for good, handed to "
                               "the source's dead-letter route (RabbitMQ dead-letter exchange)")
        self.batches = series(Counter, "pipeline_bridge_batches", "Batches delivered and acked")


def web_app(m: BridgeMetrics, ready: Callable[[], bool]) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(m.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def ready_page(request: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready_page)
    return app
