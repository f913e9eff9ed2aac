"""`pipeline schemas`: check that every schema parses and stays backward compatible."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.avro.schemas import SchemaStore
from pipeline.commands.context import console, settings
from pipeline.avro.compat import check_store

app = typer.Typer(help="Inspect and check the Avro schemas in schemas/.", no_args_is_help=True)


@app.command()
def check(ctx: typer.Context) -> None:
    """Every schema parses; the current version of each record reads every older version kept."""
    store = SchemaStore.load(settings(ctx).topology().schemas_dir)
    table = Table("record", "versions", "current fingerprint", title=f"schemas in {store.folder}")
    for name, versions in sorted(store.versions.items()):
        table.add_row(name, ", ".join(f"v{v.version}" for v in versions), versions[-1].fingerprint.hex())
    console.print(table)
    problems = check_store(store)
    for problem in problems:
        console.print(f"[red]incompatible:[/] {escape(problem)}")
    if problems:
        raise typer.Exit(1)
    console.print("[green]all schemas parse; every current version reads all older versions[/]")
