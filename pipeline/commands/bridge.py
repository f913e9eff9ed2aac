"""`pipeline bridge in|out NAME`: run a bridge declared under `bridges:` in topics.yaml."""

from __future__ import annotations

import typer

from pipeline.commands.context import settings
from pipeline.kafka.admin import require_topics

app = typer.Typer(help="Bridges to NATS JetStream, RabbitMQ and Redis Streams (bridges: in topics.yaml).",
                  no_args_is_help=True)


@app.command("in")
def in_(ctx: typer.Context, name: str = typer.Argument(..., help="A source under bridges.sources."),
        loglevel: str = typer.Option("info", help="Log level: crit, error, warn, info or debug.")) -> None:
    """Move messages from the source into its Kafka topic until Ctrl-C or SIGTERM; each batch is acked at the
    source only after Kafka acknowledged all of it."""
    topology = settings(ctx).topology()
    source = topology.bridge_source(name)
    require_topics(topology, [source.topic or topology.ingest_topic(), source.dead_letter])
    from pipeline.bridges.base import run_source

    run_source(topology, name, loglevel)


@app.command("out")
def out(ctx: typer.Context, name: str = typer.Argument(..., help="A sink under bridges.sinks."),
        loglevel: str = typer.Option("info", help="Worker log level: crit, error, warn, info or debug.")) -> None:
    """Publish a Kafka topic's records to the sink on the stage runtime: offsets are committed only after the
    sink confirmed."""
    topology = settings(ctx).topology()
    sink = topology.bridge_sink(name)
    require_topics(topology, [sink.topic, sink.dead_letter])
    from pipeline.bridges.sink import run_sink

    run_sink(topology, name, loglevel)
