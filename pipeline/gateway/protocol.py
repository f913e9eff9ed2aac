"""The gateway's wire protocol: request headers and body, error codes, and replies in JSON or Avro."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Request headers (all optional).
TIMEOUT_HEADER = "Pipeline-Timeout-Ms"  # the client waits this long: past it the request gets no model time
ACCEPT_HEADER = "Pipeline-Accept"  # "json" (default) or "avro": Avro single-object pipeline.gateway.Exchange
TRACE_HEADER = "Pipeline-Trace-Id"  # carried into the reply and the record; made up when absent
# Reply headers.
ERROR_HEADER = "Pipeline-Error"  # set on every error reply: one of ERRORS
RETRYABLE_HEADER = "Pipeline-Retryable"  # "true" when sending the same request again may succeed
CONTENT_TYPE = "Content-Type"
JSON_TYPE, AVRO_TYPE = "application/json", "application/vnd.pipeline.exchange+avro"
EXCHANGE_SCHEMA = "pipeline.gateway.Exchange"

# Error code -> retryable.
ERRORS = {
    "bad-request": False,  # the body is not a JSON object with a non-empty string "text", or a field is wrong
    "unknown-subject": False,  # no such subject under the gateway's prefix
    "text-too-long": False,  # longer than gateway.max_chars or the model's word-piece limit
    "deadline-exceeded": True,  # its Pipeline-Timeout-Ms passed before its batch ran
    "unavailable": True,  # a stage it needs (e.g. the store for search) does not answer, or is overloaded
    "internal": False,  # the model or a stage failed; the message says how
}


class GatewayError(Exception):
    """A request the gateway answers with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERRORS, code
        super().__init__(message)
        self.code = code


@dataclass
class Request:
    """One parsed request: its text, the other body fields (passed on to a forward route), and its metadata."""

    subject: str
    name: str  # the subject without the prefix, e.g. "embed"
    text: str
    request_id: str
    trace_id: str
    avro: bool
    received_ms: int
    started: float  # time.monotonic() at receipt
    deadline: float | None  # time.monotonic() past which it gets no model time
    extra: dict[str, Any] = field(default_factory=dict)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) > self.deadline


def parse(subject: str, name: str, data: bytes, headers: dict[str, str] | None) -> Request:
    """The request from a NATS message; GatewayError("bad-request") saying what is wrong."""
    headers = headers or {}
    received_ms, started = int(time.time() * 1000), time.monotonic()
    trace_id = headers.get(TRACE_HEADER) or uuid.uuid4().hex
    deadline = None
    if headers.get(TIMEOUT_HEADER):
        try:
            timeout_ms = float(headers[TIMEOUT_HEADER])
        except ValueError:
            raise GatewayError("bad-request", f"header {TIMEOUT_HEADER} must be a number of milliseconds, "
                                              f"not {headers[TIMEOUT_HEADER]!r}") from None
        deadline = started + timeout_ms / 1000
    accept = headers.get(ACCEPT_HEADER, "json").lower()
    if accept not in ("json", "avro"):
        raise GatewayError("bad-request", f"header {ACCEPT_HEADER} must be json or avro, not {accept!r}")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise GatewayError("bad-request", 'the body must be a JSON object like {"text": "..."}') from None
    if not isinstance(body, dict):
        raise GatewayError("bad-request", f'the body must be a JSON object like {{"text": "..."}}, '
                                          f"not a {type(body).__name__}")
    text = body.pop("text", None)
    if not isinstance(text, str) or not text.strip():
        raise GatewayError("bad-request", 'the body needs "text": a non-empty string')
    request_id = body.pop("id", None) or uuid.uuid4().hex
    if not isinstance(request_id, str):
        raise GatewayError("bad-request", '"id" must be a string (the request\'s doc id)')
    return Request(subject, name, text, request_id, trace_id, accept == "avro", received_ms, started, deadline,
                   body)


def exchange(request: Request, result: dict[str, Any] | None, error: GatewayError | None,
             latency_ms: float) -> dict[str, Any]:
    """The pipeline.gateway.Exchange record of a request and its result (or error)."""
    result = result or {}
    vector = result.get("vector")
    return {
        "request_id": request.request_id, "trace_id": request.trace_id, "subject": request.subject,
        "text": request.text, "model_id": result.get("model_id"), "received_ms": request.received_ms,
        "latency_ms": latency_ms, "error": error.code if error else None, "message": str(error) if error else None,
        "vector": np.asarray(vector, dtype="<f4").tobytes() if vector is not None else None,
        "label": result.get("label"), "score": result.get("score"), "scores": result.get("scores") or {},
        "hits": [{"id": str(h.get("id")), "score": float(h.get("score", 0.0)),
                  "payload_json": json.dumps(h.get("payload"), sort_keys=True)} for h in result.get("hits") or []],
    }


def ok_reply(request: Request, result: dict[str, Any], record: dict[str, Any], codec: Any) -> tuple[bytes, dict]:
    """(body, headers) of an answer: JSON, or the Exchange record in Avro when the request asked for it."""
    headers = {TRACE_HEADER: request.trace_id}
    if request.avro:
        return codec.encode(record), {**headers, CONTENT_TYPE: AVRO_TYPE}
    body = {"id": request.request_id, "trace_id": request.trace_id, **result}
    return json.dumps(body).encode(), {**headers, CONTENT_TYPE: JSON_TYPE}


def error_reply(error: GatewayError, request_id: str | None = None,
                trace_id: str | None = None) -> tuple[bytes, dict]:
    """(body, headers) of an error: always JSON, with the code in a header so a client need not parse it."""
    body = {"error": error.code, "message": str(error), "retryable": ERRORS[error.code]}
    if request_id:
        body["id"] = request_id
    headers = {ERROR_HEADER: error.code, RETRYABLE_HEADER: str(ERRORS[error.code]).lower(), CONTENT_TYPE: JSON_TYPE}
    if trace_id:
        headers[TRACE_HEADER] = trace_id
    return json.dumps(body).encode(), headers
