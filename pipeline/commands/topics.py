"""`pipeline topics`: make the cluster's topics match topics.yaml."""

from __future__ import annotations

import typer
from rich.table import Table

from pipeline.kafka import admin
from pipeline.commands.context import console, settings

app = typer.Typer(help="Create and check the topics declared in topics.yaml.", no_args_is_help=True)


@app.command()
def apply(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, change nothing."),
    fix: bool = typer.Option(False, "--fix", help="Also add partitions and alter configs that drifted."),
) -> None:
    """Create missing topics; report drift (fixed only with --fix); never delete anything."""
    topology = settings(ctx).topology()
    client = admin.admin_client(topology)
    actions = admin.plan(topology, admin.cluster_topics(client, list(topology.topics)))
    if not actions:
        console.print(f"[green]up to date:[/] {len(topology.topics)} topic(s) match topics.yaml")
        return
    table = Table("action", "topic", "detail", title="dry run: nothing changed" if dry_run else "plan")
    for action in actions:
        applies = action.kind == "create" or (fix and action.fixable)
        style = "" if applies else "yellow"
        kind = action.kind if applies or action.kind == "drift" else f"{action.kind} (needs --fix)"
        table.add_row(kind, action.topic, action.detail, style=style)
    console.print(table)
    if dry_run:
        return
    done = admin.apply(client, actions, fix=fix)
    console.print(f"applied {len(done)} change(s)")
    left = [a for a in actions if a not in done]
    if left:
        console.print(f"[yellow]{len(left)} difference(s) left[/]" + ("" if fix else "; rerun with --fix to apply the fixable ones"))
        raise typer.Exit(1)


@app.command("list")
def list_topics(ctx: typer.Context) -> None:
    """Topics on the cluster, marked with whether topics.yaml declares them."""
    topology = settings(ctx).topology()
    found = admin.cluster_topics(admin.admin_client(topology))
    table = Table("topic", "partitions", "replication", "in topics.yaml", "value schema")
    for name in sorted(set(found) | set(topology.topics)):
        have = found.get(name)
        spec = topology.topics.get(name)
        table.add_row(
            name,
            str(have.partitions) if have else "[red]missing[/]",
            str(have.replication) if have else "",
            "yes" if spec else "no",
            (spec.value_schema or "raw bytes") if spec else "",
        )
    console.print(table)


@app.command()
def describe(ctx: typer.Context, topic: list[str] = typer.Argument(None, help="Topics (default: all declared).")) -> None:
    """Declared and actual settings of topics side by side, with drift marked."""
    topology = settings(ctx).topology()
    names = topic or list(topology.topics)
    wanted = [topology.topic(n) for n in names]
    found = admin.cluster_topics(admin.admin_client(topology), names)
    for want in wanted:
        have = found.get(want.name)
        table = Table("setting", "topics.yaml", "cluster", title=want.name)
        rows = [("partitions", str(want.partitions), str(have.partitions) if have else "-"),
                ("replication", str(want.replication), str(have.replication) if have else "-")]
        rows += [(k, v, have.config.get(k, "-") if have else "-") for k, v in sorted(want.config.items())]
        for name, declared, actual in rows:
            table.add_row(name, declared, actual, style="" if declared == actual else "yellow")
        console.print(table)
