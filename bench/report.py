"""The benchmark's results: the one table (figure, reference, ratio, target), JSON, and a PNG of the ratios."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.rows import Row, all_rows


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def _reference(row: Row) -> str:
    if not row.reference_label:
        return "—"
    if row.reference is None:
        return f"{row.reference_label} (not measured)"
    return f"{row.reference_label} ({_number(row.reference, row.unit)})"


def _target(row: Row) -> str:
    if row.target is None:
        return ""
    return f"{'≤' if row.at_most else '≥'} {row.target:g}×"


def _met(row: Row) -> str:
    return {None: "", True: "[green]met[/]", False: "[red]missed[/]"}[row.met]


def table(rows: list[Row], title: str) -> Table:
    out = Table("part", "figure", "divided by", "ratio", "target", "", "note", title=title)
    for row in rows:
        reference = _reference(row)
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        out.add_row(row.label, _number(row.figure, row.unit), reference, ratio, _target(row), _met(row), row.note)
    return out


def markdown(rows: list[Row]) -> str:
    """The same table for RESULTS.md."""
    lines = ["| part | figure | divided by | ratio | target | | note |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        reference = _reference(row)
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        met = {None: "", True: "met", False: "missed"}[row.met]
        lines.append(f"| {row.label} | {_number(row.figure, row.unit)} | {reference} | {ratio} | {_target(row)} "
                     f"| {met} | {row.note} |")
    return "\n".join(lines) + "\n"


def show(results: dict[str, Any], console: Console) -> list[Row]:
    rows = all_rows(results)
    meta = results["meta"]
    console.print(table(rows, f"benchmark: {meta['machine']}, {meta['device']}, {meta['date']}"))
    return rows


def save(results: dict[str, Any], out: Path, name: str = "results") -> tuple[Path, Path]:
    """NAME.json (the figures of every part and the table's rows) and NAME.png (the ratios) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = all_rows(results)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps({**results, "rows": [r.as_dict() for r in rows]}, indent=2, default=str) + "\n")
    png_path = out / f"{name}.png"
    _chart(results, rows, png_path)
    return json_path, png_path


def _chart(results: dict[str, Any], rows: list[Row], path: Path) -> None:
    """One bar per ratio, with its target: ratios hold still where raw rates drift with the machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = [r for r in rows if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(shown) + 1.6))
    labels = [f"{r.label}\n÷ {r.reference_label}" for r in shown]
    colours = ["#4a4" if r.met else "#c44" if r.met is False else "#888" for r in shown]
    y = list(range(len(shown)))[::-1]
    ax.barh(y, [r.ratio for r in shown], color=colours)
    for yi, r in zip(y, shown):
        ax.text(r.ratio, yi, f" {r.ratio:.2f}×", va="center", fontsize=8)
        if r.target is not None:
            ax.plot([r.target, r.target], [yi - 0.4, yi + 0.4], color="black", linewidth=2)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="#888", linestyle=":", linewidth=1)
    ax.set_xlabel("ratio (log scale); black tick: target; green met, red missed, grey: no target")
    meta = results["meta"]
    ax.set_title(f"{meta['machine']}, {meta['device']} — {meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
