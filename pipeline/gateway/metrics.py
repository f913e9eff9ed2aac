"""The gateway's Prometheus series and its /metrics, /healthz and /ready pages (aiohttp)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from pipeline.runtime.metrics import BATCH_BUCKETS

FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class GatewayMetrics:
    """Requests by subject and outcome, batching, model time, latency and recording; one registry per process."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("pipeline_gateway_requests", "Requests answered, by subject and outcome (ok or "
                                "the error code)", ["subject", "outcome"], registry=r)
        self.batch_size = Histogram("pipeline_gateway_batch_size", "Requests per model call", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("pipeline_gateway_queue_wait_seconds", "From receipt until its batch ran",
                                    ["stage"], buckets=FAST_BUCKETS, registry=r)
        self.model_seconds = Histogram("pipeline_gateway_model_seconds", "Model time per batch", ["stage"],
                                       buckets=FAST_BUCKETS, registry=r)
        self.latency = Histogram("pipeline_gateway_latency_seconds", "From receipt to the reply sent, in the "
                                 "gateway", ["subject"], buckets=FAST_BUCKETS, registry=r)
        self.recorded = Counter("pipeline_gateway_records_sent", "Exchanges the broker acknowledged on "
                                "gateway.record_to", registry=r)
        self.record_failures = Counter("pipeline_gateway_record_failures", "Exchanges that could not be recorded "
                                       "to gateway.record_to (queue-full, encode, produce, delivery)", ["reason"],
                                       registry=r)


def web_app(m: GatewayMetrics, ready: Callable[[], dict[str, bool]]) -> web.Application:
    """GET /metrics, /healthz (the event loop answers) and /ready (models loaded and NATS connected)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(m.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def ready_page(request: web.Request) -> web.Response:
        state = ready()
        ok = all(state.values())
        return web.json_response({"ready": ok, **state}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready_page)
    return app
