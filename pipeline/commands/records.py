"""`pipeline produce` and `pipeline consume`: put records on a topic and look at them."""

from __future__ import annotations

import signal

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.commands.context import console, out, settings
from pipeline.kafka.consume import consume as consume_topic
from pipeline.kafka.produce import ProduceReport, produce_file


def produce(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="JSON Lines or CSV file, or - for stdin."),
    topic: str = typer.Option(..., "--topic", "-t", help="Topic declared in topics.yaml."),
    fmt: str = typer.Option(None, "--format", help="jsonl or csv (default: from the file name)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad line."),
    max_errors: int = typer.Option(20, help="How many rejected lines to list."),
) -> None:
    """Validate each record against the topic's schema and produce it keyed by its id (acks=all). Bad lines are
    listed and skipped; on Ctrl-C or an error, what was sent is flushed and reported."""
    topology = settings(ctx).topology()
    columns = [TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    progress = Progress(*columns, console=console, transient=True)
    # Ctrl-C must reach the main thread, where it interrupts a blocked read of stdin: the progress bar's
    # refresh thread is started with SIGINT blocked.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        progress.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    with progress:
        task = progress.add_task("produce", total=None)
        report = produce_file(
            topology, topic, source, fmt, strict,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    _print_report(report, max_errors)
    if report.empty:
        console.print(f"[yellow]warning:[/] {escape(source)} holds no records; nothing was sent")
        return
    if report.interrupted:
        raise typer.Exit(130)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: ProduceReport, max_errors: int) -> None:
    for number, reason in report.rejected[:max_errors]:
        console.print(f"[red]line {number}:[/] {escape(reason)}", highlight=False)
    if len(report.rejected) > max_errors:
        console.print(f"... and {len(report.rejected) - max_errors} more rejected line(s)")
    for failure in report.failed[:max_errors]:
        console.print(f"[red]not delivered:[/] {escape(failure)}", highlight=False)
    if len(report.failed) > max_errors:
        console.print(f"... and {len(report.failed) - max_errors} more record(s) not delivered")
    if report.unconfirmed:
        console.print(f"[red]not confirmed:[/] {report.unconfirmed} record(s) were handed to the producer but not "
                      "acknowledged when it stopped waiting; they may or may not be on the topic", highlight=False)
    if report.interrupted:
        console.print(f"[yellow]interrupted:[/] stopped reading after line {report.last_line}; every record "
                      "counted as sent below is on the topic", highlight=False)
    if report.error:
        console.print(f"[red]stopped by an unexpected error after line {report.last_line}:[/] "
                      f"{escape(report.error)}; every record counted as sent below is on the topic", highlight=False)
    rate = report.sent / report.seconds if report.seconds else 0.0
    table = Table("sent", "rejected", "not delivered", "records/s", "per partition", title=f"produced to {report.topic}")
    partitions = ", ".join(f"{p}: {n}" for p, n in sorted(report.per_partition.items())) or "-"
    table.add_row(str(report.sent), str(len(report.rejected)), str(report.not_delivered), f"{rate:,.0f}", partitions)
    console.print(table)


def consume(
    ctx: typer.Context,
    topic: str = typer.Argument(..., help="Topic declared in topics.yaml."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record, not the end."),
    max_messages: int = typer.Option(None, "--max", help="Stop after this many records."),
    exit_at_end: bool = typer.Option(False, "--exit-at-end", "-e", help="Stop when every partition is read to its end."),
    idle_timeout: float = typer.Option(None, "--idle-timeout", help="Stop after this many seconds without a record."),
    meta: bool = typer.Option(False, "--meta", help="Wrap each value with partition, offset, key and headers."),
    uncommitted: bool = typer.Option(
        False, "--uncommitted",
        help="Show the raw log: records of open and aborted transactions too (default: committed ones only)."),
) -> None:
    """Print a topic's records as JSON lines (decoded Avro; bytes as base64). Commits nothing."""
    topology = settings(ctx).topology()
    bad = 0
    for record in consume_topic(topology, topic, from_beginning, max_messages, exit_at_end, idle_timeout,
                                uncommitted):
        if record.error:
            bad += 1
            console.print(f"[yellow]partition {record.partition} offset {record.offset}:[/] {escape(record.error)}")
            if not meta:
                continue
        out.print(record.as_json(meta), markup=False, highlight=False, soft_wrap=True)
    if bad:
        console.print(f"[yellow]{bad} record(s) could not be decoded[/]")
