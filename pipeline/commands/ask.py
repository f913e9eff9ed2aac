"""`pipeline ask`: send one request to the online gateway over NATS and print its reply."""

from __future__ import annotations

import asyncio
import json

import typer

from pipeline.commands.context import console, out, settings
from pipeline.commands.serve import NATS_OPTION


def ask(
    ctx: typer.Context,
    subject: str = typer.Argument(..., help="A subject of the gateway section, e.g. embed, classify or search."),
    text: str = typer.Argument(..., help="The text to embed, classify or search for."),
    k: int = typer.Option(None, "-k", min=1, help="search: how many hits (the store's default: 5)."),
    label: str = typer.Option(None, "--label", "-l", help="search: only passages with this label."),
    request_id: str = typer.Option(None, "--id", help="The request's doc id (recorded with it); default: new."),
    avro: bool = typer.Option(False, "--avro", help="Ask for the reply in Avro (pipeline.gateway.Exchange, "
                                                    "single-object) and print it decoded."),
    timeout: float = typer.Option(10.0, min=0.01, help="Seconds to wait; also the request's deadline."),
    nats: str = NATS_OPTION,
) -> None:
    """Send TEXT to PREFIX.SUBJECT and print the reply as JSON; an error reply exits 1 with its message."""
    from pipeline.gateway.client import ErrorReply, ask as send  # here: nats loads only for this command
    from pipeline.gateway.server import gateway_settings

    topology = settings(ctx).topology()
    gateway = gateway_settings(topology)
    servers = nats or gateway.servers
    body = {"text": text}
    body.update({key: value for key, value in (("k", k), ("label", label), ("id", request_id)) if value})
    full = f"{gateway.prefix}.{subject}"
    reply = asyncio.run(send(servers, full, body, timeout, avro))
    if reply.error:
        message = reply.json().get("message", reply.data.decode(errors="replace"))
        retry = " (retryable)" if reply.retryable else ""
        raise ErrorReply(f"{full}: {reply.error}{retry}: {message}")
    if avro:
        from pipeline.avro.codecs import schema_store
        from pipeline.gateway.protocol import EXCHANGE_SCHEMA

        record = schema_store(topology).codec(EXCHANGE_SCHEMA).decode(reply.data)
        if record.get("vector") is not None:
            import numpy as np

            record["vector"] = np.frombuffer(record["vector"], dtype="<f4").tolist()
        out.print_json(json.dumps(record))
        return
    out.print_json(reply.data.decode())
    if subject == "search" and not reply.json().get("hits"):
        console.print("no hits (is anything stored yet? the demo stores its data: `pipeline demo`)")
