"""`python -m bench.bare_faust CONFIG STAGE WARM COUNT MARKS`: a Faust agent that takes and acks, no work.

It reads the stage's input topic with the stage's own Faust settings (copied from the app the runtime builds,
so a setting changed in pipeline/runtime/app.py changes this too) and the stage's take size. It touches
MARKS.warm once it has acked WARM events, and writes MARKS.done (JSON: the time of the ack that reached
WARM + COUNT events, and the settings) once it has; the caller sends the COUNT events and stops it.
This is Faust's own per-event ceiling for a light stage on this broker.

`--ack last` acks only the last event of each partition in each take: an experiment. Faust then commits
nothing after the first take, as its commit needs every offset acked (bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import typer

# The settings of the stage's Faust app that shape how it consumes; the rest are Faust's defaults in both.
COPIED = ("broker", "broker_credentials", "store", "topic_disable_leader", "topic_allow_declare",
          "consumer_auto_offset_reset", "broker_commit_interval", "stream_wait_empty", "broker_max_poll_records",
          "stream_buffer_maxsize", "consumer_max_fetch_size", "broker_max_poll_interval")


def main(config: Path, stage: str, warm: int, count: int, marks: Path,
         ack: str = typer.Option("each", help="each: every event (as the runtime); last: the last per partition.")
         ) -> None:
    import faust

    from pipeline.config import load_topology
    from pipeline.runtime.app import build_app

    topology = load_topology(config)
    spec = topology.stages[stage]
    conf = build_app(topology, stage).conf
    settings = {name: getattr(conf, name) for name in COPIED}
    settings["broker"] = [str(url) for url in settings["broker"]]
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
