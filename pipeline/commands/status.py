"""`pipeline status`: one table for the stages and one for the bridges; --watch refreshes them."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from pipeline.bridges.status import METRICS_TIMEOUT_S, BridgeStatus, bridge_snapshot
from pipeline.commands.context import console, out, settings
from pipeline.config import Topology
from pipeline.kafka.status import StageStatus, Throughput, snapshot


def _rate(throughput: Throughput, name: str) -> str:
    rate = throughput.rate(name)
    return f"{rate[0]:,.1f} over {rate[1]:.0f} s" if rate else "-"


def _table(statuses: dict[str, StageStatus], throughput: Throughput) -> Table:
    table = Table("stage", "group", "state", "members", "lag", "records/s", "dead letters",
                  title="pipeline status (committed offsets, from the broker)")
    for name, s in statuses.items():
        table.add_row(name, s.group, s.state, str(s.members), f"{s.lag:,}", _rate(throughput, name),
                      f"{s.dead_letters:,}", style="yellow" if s.lag and not s.members else "")
    return table


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _bridge_table(bridges: dict[str, BridgeStatus], throughput: Throughput) -> Table:
    shared = any(b.shared for b in bridges.values())
    table = Table("bridge", "route", "state", "members", "backlog / lag", "records/s", "in / out", "dead letters",
                  title="bridges (sources: their /metrics; sinks: committed offsets)",
                  caption="* a dead-letter topic shared with other bridges or stages: the count is the whole topic's; "
                          "`pipeline dlq show --bridge NAME` shows this bridge's" if shared else None)
    for name, b in bridges.items():
        moved = f"{_count(b.messages_in)} / {_count(b.consumed)}" if b.direction == "in" else "-"
        style = "red" if b.state in ("down", "stuck") else "yellow" if b.direction == "out" and b.backlog and \
            not b.members else ""
        table.add_row(name, b.route, b.state, _count(b.members), _count(b.backlog), _rate(throughput, name), moved,
                      f"{b.dead_letters:,}" + (" *" if b.shared else ""), style=style)
    return table


class _Readings:
    """Successive snapshots of the stages and bridges, with their rates."""

    def __init__(self, topology: Topology, host: str) -> None:
        self.topology, self.host = topology, host
        self.stages, self.bridges = Throughput(), Throughput()

    def take(self) -> Group | Table:
        statuses = snapshot(self.topology)
        self.stages.add(statuses)
        table = _table(statuses, self.stages)
        if not (self.topology.bridges.sources or self.topology.bridges.sinks):
            return table
        bridges = bridge_snapshot(self.topology, self.host)
        self.bridges.add(bridges)
        return Group(table, _bridge_table(bridges, self.bridges))


def status(
    ctx: typer.Context,
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C; rates over the last minute."),
    interval: float = typer.Option(5.0, min=0.5, help="Seconds between two readings of the offsets."),
    as_json: bool = typer.Option(False, "--json", help="Print one reading as JSON ({\"stages\": [...], "
                                                       "\"bridges\": [...]}, no rates) instead of tables."),
    bridges_host: str = typer.Option("127.0.0.1", help="Host whose web ports serve the source bridges' /metrics "
                                                       f"(a bridge silent for {METRICS_TIMEOUT_S:g} s shows as down)."),
) -> None:
    """Per stage: consumer group state and members, lag, records/s and dead letters; per bridge: its state,
    backlog or lag, records/s and dead letters."""
    topology = settings(ctx).topology()
    if as_json:
        reading = {"stages": [vars(s) for s in snapshot(topology).values()],
                   "bridges": [vars(b) for b in bridge_snapshot(topology, bridges_host).values()]}
        out.print(json.dumps(reading, indent=2), markup=False, highlight=False)
        return
    readings = _Readings(topology, bridges_host)
    readings.take()
    if not watch:
        with console.status(f"measuring throughput for {interval:g} s ..."):
            time.sleep(interval)
        console.print(readings.take())
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(readings.take(), refresh=True)
