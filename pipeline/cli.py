"""The `pipeline` command: composes the command groups and turns PipelineError into a clear exit."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer
from rich.markup import escape

from pipeline.commands import (ask, bridge, delete, dev, dlq, k8s, records, replay, run, schemas, serve, stage,
                               status, topics)
from pipeline.commands.context import Settings, console
from pipeline.errors import PipelineError

app = typer.Typer(
    help="AI inference pipelines on Kafka: Avro-typed topics, Faust stages, replayable from offsets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    config: str = typer.Option(None, "--config", "-c", envvar="PIPELINE_CONFIG",
                               help="Topology file (default: ./topics.yaml)."),
    bootstrap: str = typer.Option(None, "--bootstrap", envvar="KAFKA_BOOTSTRAP",
                                  help="Kafka bootstrap servers, overriding topics.yaml."),
) -> None:
    ctx.obj = Settings(config=config, bootstrap=bootstrap)


app.add_typer(dev.app, name="dev")
app.add_typer(topics.app, name="topics")
app.add_typer(schemas.app, name="schemas")
app.add_typer(dlq.app, name="dlq")
app.add_typer(k8s.app, name="k8s")
app.add_typer(stage.app, name="stage")
app.add_typer(bridge.app, name="bridge")
app.command()(records.produce)
app.command()(records.consume)
app.command()(delete.delete)
app.command()(run.run)
app.command()(replay.offsets)
app.command()(replay.replay)
app.command()(replay.backfill)
app.command()(status.status)
app.command()(serve.serve)
app.command()(ask.ask)


def _add_plugins() -> None:
    """Commands that stage packages contribute through the `pipeline.commands` entry point group."""
    for entry in entry_points(group="pipeline.commands"):
        command = entry.load()
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(name=entry.name)(command)


_add_plugins()


def main() -> None:
    try:
        app()
    except PipelineError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
