"""`pipeline dlq`: what each stage dead-lettered and why, and redriving it after a fix."""

from __future__ import annotations

from collections import Counter

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.kafka import dlq
from pipeline.commands.context import console, settings
from pipeline.config import Topology


app = typer.Typer(help="Inspect and redrive the stages' dead-letter topics.", no_args_is_help=True)


def _letters(ctx: typer.Context, stage: str, where: str | None) -> tuple[Topology, list[dlq.DeadLetter]]:
    topology = settings(ctx).topology()
    topology.stage(stage)
    letters = dlq.dead_letters(topology, stage)
    return topology, [d for d in letters if where is None or d.reason == where]


@app.command()
def show(
    ctx: typer.Context,
    stage: str = typer.Argument(..., help="Stage whose dead letters to show."),
    where: str = typer.Option(None, help="Only this reason (e.g. empty-text)."),
    last: int = typer.Option(10, help="How many of the newest letters to list."),
) -> None:
    """Dead letters grouped by reason, then the newest ones with where they came from."""
    topology, letters = _letters(ctx, stage, where)
    topic = topology.stages[stage].dead_letter
    if not letters:
        console.print(f"no dead letters in {topic}" + (f" with reason {where}" if where else ""))
        return
    reasons = Counter(d.reason for d in letters)
    example = {d.reason: d.error.get("message", "") for d in letters}
    table = Table("reason", "count", "example message", title=f"{topic}: {len(letters)} dead letter(s)")
    for reason, count in reasons.most_common():
        table.add_row(reason, str(count), escape(example[reason][:100]))
    console.print(table)
    table = Table("dlq offset", "source", "reason", "error", "message", title=f"newest {min(last, len(letters))}")
    newest = sorted(letters, key=lambda d: int(d.error.get("time_ms", 0)))[-last:]
    for d in newest:
        e = d.error
        table.add_row(f"{d.partition}/{d.offset}", f"{e.get('topic')}/{e.get('partition')}/{e.get('offset')}",
                      d.reason, e.get("class", ""), escape(e.get("message", "")[:80]))
    console.print(table)


@app.command()
def redrive(
    ctx: typer.Context,
    stage: str = typer.Argument(..., help="Stage whose dead letters go back to its input."),
    where: str = typer.Option(None, help="Only letters with this reason."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be redriven, send nothing."),
) -> None:
    """Send dead letters back to the stage's input topic byte for byte (after fixing what failed them)."""
    topology, letters = _letters(ctx, stage, where)
    spec = topology.stages[stage]
    if dry_run or not letters:
        console.print(f"{len(letters)} dead letter(s) would go from {spec.dead_letter} to {spec.input}")
        return
    sent = dlq.redrive(topology, stage, letters)
    console.print(f"redrove {sent} record(s) from {spec.dead_letter} to {spec.input}; "
                  f"start the stage (`pipeline run {stage}`) to process them")
