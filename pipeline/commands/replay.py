"""`pipeline offsets`, `pipeline replay` and `pipeline backfill`: see and move where stages are in their input."""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.runtime.backfill import plan_ranges, run_backfill
from pipeline.commands.context import console, out, override_stage, settings
from pipeline.errors import PipelineError
from pipeline.kafka.offsets import group_state, stage_lag
from pipeline.kafka import reset


def _stages(topology, stage: str | None) -> list[str]:
    if stage is None:
        return list(topology.stages)
    topology.stage(stage)
    return [stage]


def offsets(
    ctx: typer.Context,
    stage: str = typer.Argument(None, help="One stage (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    group: str = typer.Option(None, help="Another group on the stage's input (a second lane, a backfill)."),
) -> None:
    """Per stage and input partition: committed offset, log end, lag; and the group's state and members."""
    topology = settings(ctx).topology()
    if group:
        if stage is None:
            raise PipelineError("--group needs a STAGE (whose input topic that group reads)")
        override_stage(topology, stage, None, group, None)
    rows = []
    for name in _stages(topology, stage):
        spec = topology.stages[name]
        state = group_state(topology, spec.group)
        for r in stage_lag(topology, name):
            rows.append({"stage": name, "group": spec.group, "state": state.state, "members": state.members,
                         "topic": r.topic, "partition": r.partition, "committed": r.committed,
                         "start": r.start, "end": r.end, "lag": r.lag})
    if as_json:
        out.print(json.dumps(rows, indent=2), markup=False, highlight=False)
        return
    table = Table("stage", "group state", "members", "topic", "partition", "committed", "log end", "lag")
    for r in rows:
        table.add_row(r["stage"], r["state"], str(r["members"]), r["topic"], str(r["partition"]),
                      "-" if r["committed"] is None else str(r["committed"]), str(r["end"]), str(r["lag"]),
                      style="yellow" if r["lag"] else "")
    console.print(table)


def _target(earliest: bool, latest: bool, to_datetime: str | None, to_offset: int | None,
            shift_by: int | None, by_duration: str | None) -> reset.Target:
    given = [t for t in (
        ("earliest", None) if earliest else None,
        ("latest", None) if latest else None,
        ("datetime", reset.parse_datetime(to_datetime)) if to_datetime else None,
        ("offset", to_offset) if to_offset is not None else None,
        ("shift", shift_by) if shift_by is not None else None,
        ("duration", reset.parse_duration(by_duration)) if by_duration else None,
    ) if t]
    if len(given) != 1:
        raise PipelineError("give exactly one of --to-earliest, --to-latest, --to-datetime, --to-offset, "
                            "--shift-by, --by-duration")
    return reset.Target(*given[0])


def replay(
    ctx: typer.Context,
    stage: str = typer.Argument(..., help="The stage whose consumer group moves."),
    to_earliest: bool = typer.Option(False, "--to-earliest", help="Back to the oldest retained record."),
    to_latest: bool = typer.Option(False, "--to-latest", help="Skip to the end (reprocess nothing)."),
    to_datetime: str = typer.Option(None, "--to-datetime", help="First record at or after this ISO 8601 time."),
    to_offset: int = typer.Option(None, "--to-offset", help="This offset (clamped to the log's range)."),
    shift_by: int = typer.Option(None, "--shift-by", help="Move by ±N from the committed offset (clamped)."),
    by_duration: str = typer.Option(None, "--by-duration", help="Back by an ISO 8601 duration from now, e.g. PT2H."),
    partitions: str = typer.Option(None, "--partitions", help="Only these partitions, e.g. 0,2."),
    execute: bool = typer.Option(False, "--execute", help="Apply the plan (the default is a dry run)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the group has no active members."),
    wait_timeout: float = typer.Option(300, help="Seconds --wait waits."),
) -> None:
    """Reset a stopped stage's committed offsets; it reprocesses from there when started again."""
    topology = settings(ctx).topology()
    _stages(topology, stage)
    target = _target(to_earliest, to_latest, to_datetime, to_offset, shift_by, by_duration)
    try:
        chosen = [int(p) for p in partitions.split(",")] if partitions else None
    except ValueError:
        raise PipelineError(f"--partitions takes numbers separated by commas, not '{partitions}'") from None
    if wait:
        reset.wait_until_empty(topology, topology.stages[stage].group, wait_timeout)
    reset.refuse_if_active(topology, stage)
    plan = reset.plan_reset(topology, stage, target, chosen)
    title = f"replay {stage} ({topology.stages[stage].group}) to {target.describe()}"
    table = Table("partition", "current", "new", "to reprocess", title=title + ("" if execute else ": dry run"))
    for r in plan:
        table.add_row(str(r.partition), "-" if r.current is None else str(r.current), str(r.new), str(r.to_reprocess))
    console.print(table)
    if not execute:
        console.print("dry run: nothing changed; add --execute to apply")
        return
    reset.refuse_if_active(topology, stage)  # again: someone may have started it meanwhile
    reset.apply_reset(topology, stage, plan)
    console.print(f"[green]reset {len(plan)} partition(s)[/]: start the stage (`pipeline run {stage}`) to reprocess "
                  f"{sum(r.to_reprocess for r in plan)} record(s)")


def backfill(
    ctx: typer.Context,
    stage: str = typer.Argument(..., help="The stage to run over the range."),
    since: str = typer.Option(..., "--from", help="ISO 8601 time of the first record to process."),
    until: str = typer.Option(None, "--until", help="ISO 8601 time to stop before (default: the log's end now)."),
    group: str = typer.Option(None, help="Consumer group of this run (default: <live group>.backfill)."),
    rate: float = typer.Option(None, "--rate", min=1, help="At most this many records per second."),
    option: list[str] = typer.Option(None, "--option", "-o", help="Override a stage option, KEY=VALUE (repeatable)."),
) -> None:
    """Run a stage over a bounded range under its own consumer group and exit when it is done; the live group
    is untouched."""
    topology = settings(ctx).topology()
    override_stage(topology, stage, option, None, None)
    start = reset.parse_datetime(since)
    end: datetime | None = reset.parse_datetime(until) if until else None
    if end is not None and end <= start:
        raise PipelineError("--until must be after --from")
    group = group or f"{topology.stages[stage].group}.backfill"
    ranges = plan_ranges(topology, topology.stages[stage].input, start, end)
    columns = [TextColumn(f"backfill {stage}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("backfill", total=sum(r.size for r in ranges))
        done = run_backfill(topology, stage, group, ranges, rate,
                            on_progress=lambda n, total: progress.update(task, completed=n, total=total))
    console.print(f"backfilled {done} record(s) of {topology.stages[stage].input} under group {group}")
