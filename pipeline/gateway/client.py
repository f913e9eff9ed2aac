"""A client of the gateway: one request over NATS, with errors that name the subject and server tried."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from pipeline.errors import PipelineError
from pipeline.gateway import protocol


class NoGateway(PipelineError):
    """No gateway subscribes to the subject (NATS "no responders"): retryable once one runs."""


class NoReply(PipelineError):
    """The request timed out (e.g. the gateway that took it died): retryable."""


class ErrorReply(PipelineError):
    """The gateway answered with an error (`pipeline ask` exits 1)."""

    exit_code = 1


@dataclass
class Reply:
    data: bytes
    headers: dict[str, str]

    @property
    def error(self) -> str | None:
        return self.headers.get(protocol.ERROR_HEADER)

    @property
    def retryable(self) -> bool:
        return self.headers.get(protocol.RETRYABLE_HEADER) == "true"

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


async def connect(servers: str) -> Any:
    async def quiet(exc: Exception) -> None:  # the error below says it once
        pass

    # max_reconnect_attempts=0 makes nats-py 2.16 retry a refused first connection for ever: 1 fails in time.
    options = dict(connect_timeout=3, max_reconnect_attempts=1, allow_reconnect=False, error_cb=quiet,
                   name="pipeline-ask")
    try:
        return await asyncio.wait_for(nats.connect(servers.split(","), **options), 10)
    except Exception as exc:  # noqa: BLE001 - nats-py raises several kinds for "cannot connect"
        raise PipelineError(f"cannot reach NATS at {servers} ({type(exc).__name__}: {exc}); start one with "
                            "`pipeline dev up --with nats`, or give --nats URL (or NATS_URL)") from None


async def request(nc: Any, servers: str, subject: str, body: dict[str, Any] | bytes, timeout: float,
                  avro: bool = False, headers: dict[str, str] | None = None) -> Reply:
    """Send one request on an open connection; NoGateway / NoReply name the subject and servers."""
    headers = {protocol.TIMEOUT_HEADER: str(int(timeout * 1000)), **(headers or {})}
    if avro:
        headers[protocol.ACCEPT_HEADER] = "avro"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    except NoRespondersError:
        raise NoGateway(f"no gateway answers on {subject} at {servers}: start one with `pipeline serve`") from None
    except NatsTimeout:
        raise NoReply(f"no reply on {subject} from {servers} within {timeout:g} s (a gateway took the request but "
                      "did not answer in time: see its log; retry, or raise --timeout)") from None
    return Reply(msg.data, dict(msg.headers or {}))


async def ask(servers: str, subject: str, body: dict[str, Any] | bytes, timeout: float = 10.0,
              avro: bool = False) -> Reply:
    """Connect, send one request, close."""
    nc = await connect(servers)
    try:
        return await request(nc, servers, subject, body, timeout, avro)
    finally:
        await nc.close()
