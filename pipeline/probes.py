"""The /metrics, /healthz and /ready pages of a process that is not a Faust worker (the gateway, the bridges)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def probe_app(registry: CollectorRegistry, ready: Callable[[], dict[str, bool]]) -> web.Application:
    """GET /metrics (Prometheus), /healthz (the event loop answers) and /ready (200 when every check in
    `ready()` is true, else 503, with the checks in the body)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

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
