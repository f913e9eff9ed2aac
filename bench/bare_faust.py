"""`python -m bench.bare_faust CONFIG STAGE WARM COUNT MARKS`: a Faust agent that takes and acks, no work.

It reads the stage's input topic with the Faust settings the stage runtime used while Faust consumed Kafka itself
(before the librdkafka loop of pipeline/runtime/loop.py) and the stage's take size. It touches
MARKS.warm once it has acked WARM events, and writes MARKS.done (JSON: the time of the ack that reached
WARM + COUNT events, and the settings) once it has; the caller sends the COUNT events and stops it.
This is Faust's own per-event ceiling for a light stage on this broker.

`--ack last` acks only the last event of each partition in each take: an experiment. Faust then commits
nothing after the first take, as its commit needs every offset acked (bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from pipeline.config import KafkaSecurity
from pipeline.kafka.security import credentials

# What the Faust consumer of a stage was given; the rest are Faust's defaults (some read from the environment).
SETTINGS = {"store": "memory://", "topic_disable_leader": True, "topic_allow_declare": False,
            "consumer_auto_offset_reset": "earliest", "broker_commit_interval": 1.0, "stream_wait_empty": False}


def faust_credentials(security: KafkaSecurity) -> Any:
    """topics.yaml's security settings as Faust's broker_credentials, or None for PLAINTEXT."""
    import faust

    context = ssl.create_default_context(cafile=security.ca_file) if security.protocol.endswith("SSL") else None
    if security.protocol == "SSL":
        return faust.SSLCredentials(context)
    if security.protocol.startswith("SASL"):
        username, password = credentials(security)
        return faust.SASLCredentials(username=username, password=password, ssl_context=context,
                                     mechanism=security.sasl_mechanism)
    return None


def main(config: Path, stage: str, warm: int, count: int, marks: Path,
         ack: str = typer.Option("each", help="each: every event (as the runtime); last: the last per partition.")
         ) -> None:
    import faust

    from pipeline.config import load_topology

    topology = load_topology(config)
    spec = topology.stages[stage]
    settings = {**SETTINGS, "broker": [f"kafka://{host}" for host in topology.kafka.bootstrap.split(",")],
                "broker_credentials": faust_credentials(topology.kafka.security),
                "broker_session_timeout": topology.kafka.session_timeout_s}
    app = faust.App(f"{spec.group}.bare", **settings, web_enabled=False,
                    datadir=tempfile.mkdtemp(prefix="bare-faust-"))
    topic = app.topic(spec.input, key_serializer="raw", value_serializer="raw", internal=False)
    warmed, done = marks.with_suffix(".warm"), marks.with_suffix(".done")

    @app.agent(topic, name="bench.bare")
    async def bare(stream: faust.StreamT) -> None:
        seen = 0
        within = spec.batch.max_wait_ms / 1000
        async for events in stream.noack_take(spec.batch.max_records, within=within):
            if ack == "each":
                for event in events:
                    await stream.ack(event)
            else:
                last = {event.message.tp: event for event in events}
                for event in last.values():
                    await stream.ack(event)
            seen += len(events)
            if seen >= warm and not warmed.exists():
                warmed.touch()
            if seen >= warm + count and not done.exists():
                tmp = marks.with_suffix(".tmp")
                tmp.write_text(json.dumps({"time": time.time(), "events": seen,
                                           "settings": {k: str(v) for k, v in settings.items()
                                                        if k != "broker_credentials"}}))
                os.replace(tmp, done)

    from faust.worker import Worker

    Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    typer.run(main)
