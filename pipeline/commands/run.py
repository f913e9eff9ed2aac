"""`pipeline run`: run a stage (or all of them) as worker processes."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.commands.context import console, override_stage, settings
from pipeline.errors import ConfigError
from pipeline.runtime.stage import stage_options
from pipeline.runtime.supervisor import Supervisor, worker_command


def run(
    ctx: typer.Context,
    stage: str = typer.Argument(..., help="A stage from topics.yaml, or 'all' for every stage."),
    replicas: int = typer.Option(1, "--replicas", "-n", min=1, help="Worker processes of this stage."),
    replica: int = typer.Option(None, "--replica", hidden=True, help="Index of this worker (set by the supervisor)."),
    log_dir: Path = typer.Option(None, help="Write each worker's log to DIR/NAME.log instead of the terminal."),
    loglevel: str = typer.Option("info", help="Worker log level: crit, error, warn, info or debug."),
    option: list[str] = typer.Option(None, "--option", "-o", help="Override a stage option, KEY=VALUE (repeatable)."),
    group: str = typer.Option(None, help="Run under this consumer group instead of the one in topics.yaml."),
    web_port: int = typer.Option(None, help="Serve metrics and routes on this port instead."),
) -> None:
    """Run stage workers until Ctrl-C or SIGTERM: each finishes its batch in hand and commits, then exits."""
    s = settings(ctx)
    topology = s.topology()
    names = list(topology.stages) if stage == "all" else [stage]
    for name in names:
        topology.stage(name)
    overrides = [a for o in option or [] for a in ("--option", o)]
    overrides += ["--group", group] if group else []
    overrides += ["--web-port", str(web_port)] if web_port else []
    if overrides and len(names) > 1:
        raise ConfigError("--option, --group and --web-port apply to one stage, not to 'all'")
    if overrides:
        override_stage(topology, names[0], option, group, web_port)
    for name in names:  # a misspelled option fails here, before any worker starts
        stage_options(topology, name)
    if replica is not None or (len(names) == 1 and replicas == 1):
        from pipeline.runtime.app import run_worker

        run_worker(topology, names[0], replica or 0, loglevel)
        return
    partitions = {name: topology.topic(topology.stages[name].input).partitions for name in names}
    for name in names:
        if replicas > partitions[name]:
            console.print(f"[yellow]{name}: {replicas} replicas but {partitions[name]} input partitions; "
                          f"{replicas - partitions[name]} will idle[/]")
    commands = {
        f"{name}-{i}": worker_command(name, i, s.config, s.bootstrap) + overrides
        for name in names for i in range(replicas)
    }
    console.print(f"starting {', '.join(commands)} (Ctrl-C stops them all)")
    raise typer.Exit(Supervisor(commands, log_dir).run())
