"""`pipeline status`: one table for the whole pipeline; --watch refreshes it."""

from __future__ import annotations

import json
import time

import typer
from rich.live import Live
from rich.table import Table

from pipeline.commands.context import console, out, settings
from pipeline.kafka.status import StageStatus, Throughput, snapshot


def _table(statuses: dict[str, StageStatus], throughput: Throughput) -> Table:
    table = Table("stage", "group", "state", "members", "lag", "records/s", "dead letters",
                  title="pipeline status (committed offsets, from the broker)")
    for name, s in statuses.items():
        rate = throughput.rate(name)
        table.add_row(name, s.group, s.state, str(s.members), f"{s.lag:,}",
                      f"{rate[0]:,.1f} over {rate[1]:.0f} s" if rate else "-", f"{s.dead_letters:,}",
                      style="yellow" if s.lag and not s.members else "")
    return table


def status(
    ctx: typer.Context,
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C; rates over the last minute."),
    interval: float = typer.Option(5.0, min=0.5, help="Seconds between two readings of the offsets."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON reading (no rates) instead of a table."),
) -> None:
    """Per stage: consumer group state and members, lag, records/s and dead letters."""
    topology = settings(ctx).topology()
    if as_json:
        out.print(json.dumps([vars(s) for s in snapshot(topology).values()], indent=2), markup=False,
                  highlight=False)
        return
    throughput = Throughput()
    throughput.add(snapshot(topology))
    if not watch:
        with console.status(f"measuring throughput for {interval:g} s ..."):
            time.sleep(interval)
        statuses = snapshot(topology)
        throughput.add(statuses)
        console.print(_table(statuses, throughput))
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            statuses = snapshot(topology)
            throughput.add(statuses)
            live.update(_table(statuses, throughput), refresh=True)
