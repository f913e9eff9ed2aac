"""`pipeline dlq`: what a stage or a bridge dead-lettered and why, and redriving it after a fix."""

from __future__ import annotations

from collections import Counter

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.kafka import dlq
from pipeline.commands.context import console, settings
from pipeline.config import Topology
from pipeline.errors import PipelineError


app = typer.Typer(help="Inspect and redrive the dead-letter topics of the stages and the bridges.",
                  no_args_is_help=True)

BRIDGE = typer.Option(None, "--bridge", help="A bridge under bridges: in topics.yaml (a source or a sink), instead "
                                             "of a stage: only the letters it wrote to its dead-letter topic.")


def _letters(ctx: typer.Context, stage: str | None, bridge: str | None,
             where: str | None) -> tuple[Topology, str, list[dlq.DeadLetter]]:
    """(topology, dead-letter topic, the letters of the stage or bridge with that reason)."""
    if (stage is None) == (bridge is None):
        raise PipelineError("give a STAGE, or --bridge NAME for a bridge's dead letters (one of them)")
    topology = settings(ctx).topology()
    if bridge is not None:
        from pipeline.bridges import dlq as bridge_dlq  # here: the bridge code loads only for --bridge

        topic = bridge_dlq.bridge_dead_letter_topic(topology, bridge)
        letters = bridge_dlq.bridge_dead_letters(topology, bridge)
    else:
        topic = topology.stage(stage).dead_letter
        letters = dlq.dead_letters(topology, stage)
    return topology, topic, [d for d in letters if where is None or d.reason == where]


@app.command()
def show(
    ctx: typer.Context,
    stage: str = typer.Argument(None, help="Stage whose dead letters to show."),
    bridge: str = BRIDGE,
    where: str = typer.Option(None, help="Only this reason (e.g. empty-text)."),
    last: int = typer.Option(10, help="How many of the newest letters to list."),
) -> None:
    """Dead letters grouped by reason, then the newest ones with where they came from."""
    _, topic, letters = _letters(ctx, stage, bridge, where)
    if not letters:
        console.print(f"no dead letters in {topic}" + (f" from bridge {bridge}" if bridge else "")
                      + (f" with reason {where}" if where else ""))
        return
    reasons = Counter(d.reason for d in letters)
    example = {d.reason: d.error.get("message", "") for d in letters}
    title = f"{topic}: {len(letters)} dead letter(s)" + (f" from bridge {bridge}" if bridge else "")
    table = Table("reason", "count", "example message", title=title)
    for reason, count in reasons.most_common():
        table.add_row(reason, str(count), escape(example[reason][:100]))
    console.print(table)
    table = Table("dlq offset", "source", "reason", "error", "message", title=f"newest {min(last, len(letters))}")
    newest = sorted(letters, key=lambda d: int(d.error.get("time_ms", 0)))[-last:]
    for d in newest:
        e = d.error
        source = f"{e.get('topic')} id {e['source_id']}" if "source_id" in e else \
            f"{e.get('topic')}/{e.get('partition')}/{e.get('offset')}"
        table.add_row(f"{d.partition}/{d.offset}", escape(source), d.reason, e.get("class", ""),
                      escape(e.get("message", "")[:80]))
    console.print(table)


def _redrive_source(topology: Topology, bridge: str, topic: str, letters: list[dlq.DeadLetter],
                    dry_run: bool) -> None:
    from pipeline.bridges import dlq as bridge_dlq

    result = bridge_dlq.redrive_source(topology, bridge, letters, dry_run)
    verb = "would go" if dry_run else "went"
    console.print(f"{result.sent} of {len(letters)} dead letter(s) pass bridge {bridge}'s conversion now and {verb} "
                  f"from {topic} to {result.topic}")
    if result.refused:
        reasons = Counter(refused.reason for _, refused in result.refused)
        console.print(f"[yellow]{len(result.refused)} still refused[/], left in {topic}: "
                      + ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()), highlight=False)
        for letter, refused in result.refused[:5]:
            console.print(f"  {letter.origin}: {refused.reason}: {escape(refused.message[:150])}", highlight=False)
        if not dry_run:
            raise typer.Exit(1)


@app.command()
def redrive(
    ctx: typer.Context,
    stage: str = typer.Argument(None, help="Stage whose dead letters go back to its input."),
    bridge: str = BRIDGE,
    where: str = typer.Option(None, help="Only letters with this reason."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be redriven, send nothing."),
) -> None:
    """Send dead letters back to the stage's input topic byte for byte (after fixing what failed them). A source
    bridge's letters go through the bridge's conversion again: those that pass now are produced to its topic, the
    others stay and are listed (exit status 1). A sink bridge's go back to the topic it reads, byte for byte."""
    topology, topic, letters = _letters(ctx, stage, bridge, where)
    if bridge is not None and bridge in topology.bridges.sources:
        _redrive_source(topology, bridge, topic, letters, dry_run)
        return
    if bridge is not None:  # a sink runs as a stage: its letters are records of the topic it reads
        from pipeline.bridges.sink import sink_stage

        stage = sink_stage(topology, bridge)
    target = topology.stages[stage].input
    if dry_run or not letters:
        console.print(f"{len(letters)} dead letter(s) would go from {topic} to {target}")
        return
    sent = dlq.redrive(topology, stage, letters)
    start = f"`pipeline bridge out {bridge}`" if bridge else f"`pipeline run {stage}`"
    console.print(f"redrove {sent} record(s) from {topic} to {target}; start the {'bridge' if bridge else 'stage'} "
                  f"({start}) to process them")
