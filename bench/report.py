"""The benchmark's results: a rich table, the ratios against the targets, JSON and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

STAGE_TARGET = 5000  # events/s per process for each non-model stage
TARGETS = {  # ratio name -> minimum on a CPU
    "embed_stage / model_ceiling": 0.9,
    "pipeline / model_ceiling": 0.8,
    "pipeline / naive_baseline": 1.2,
}
LATENCY_TARGET_S = 2.0


def ratios(results: dict[str, Any]) -> dict[str, float]:
    ceiling = results.get("model_ceiling", {}).get("passages_per_s")
    naive = results.get("naive_baseline", {}).get("passages_per_s")
    embed = results.get("embed_stage", {}).get("records_per_s")
    pipeline = results.get("pipeline", {}).get("passages_per_s")
    pairs = {"embed_stage / model_ceiling": (embed, ceiling), "pipeline / model_ceiling": (pipeline, ceiling),
             "pipeline / naive_baseline": (pipeline, naive)}
    return {name: a / b for name, (a, b) in pairs.items() if a and b}


def nearby_ratios(results: dict[str, Any]) -> dict[str, float]:
    """The same ratios against the ceiling measured just before each part (drift between parts removed)."""
    found = {}
    for name, part, key in (("embed_stage / model_ceiling", "embed_stage", "records_per_s"),
                            ("pipeline / model_ceiling", "pipeline", "passages_per_s")):
        figures = results.get(part, {})
        if figures.get("nearby_ceiling_passages_per_s"):
            found[name] = figures[key] / figures["nearby_ceiling_passages_per_s"]
    return found


def _verdict(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def show(results: dict[str, Any], console: Console) -> None:
    table = Table("part", "figure", "target", "", title=f"benchmark: {results['meta']['machine']}")
    if c := results.get("model_ceiling"):
        table.add_row("model ceiling", f"{c['passages_per_s']:,.1f} passages/s, {c['tokens_per_s']:,.0f} tokens/s "
                      f"(batch {c['best_batch_size']})", "", "")
    if n := results.get("naive_baseline"):
        table.add_row("naive baseline", f"{n['passages_per_s']:,.1f} passages/s", "", "")
    if e := results.get("embed_stage"):
        table.add_row("embed stage", f"{e['records_per_s']:,.1f} passages/s (mean batch {e['mean_batch']:.0f})",
                      "", "")
    if p := results.get("pipeline"):
        table.add_row("whole pipeline", f"{p['documents_per_s']:,.1f} documents/s, "
                      f"{p['passages_per_s']:,.1f} passages/s", "", "")
        ok = p["latency_p99_s"] <= LATENCY_TARGET_S
        table.add_row(f"latency at {p['steady_documents_per_s']:.1f} docs/s",
                      f"p50 {p['latency_p50_s']:.2f} s, p99 {p['latency_p99_s']:.2f} s",
                      f"p99 ≤ {LATENCY_TARGET_S:g} s", _verdict(ok))
    for stage, s in results.get("stages", {}).items():
        table.add_row(f"{stage} alone", f"{s['records_per_s']:,.0f} events/s "
                      f"(busy {s['busy_records_per_s']:,.0f}/s)", f"≥ {STAGE_TARGET:,}",
                      _verdict(s["records_per_s"] >= STAGE_TARGET))
    nearby = nearby_ratios(results)
    for name, value in ratios(results).items():
        beside = f" ({nearby[name]:.2f}× against the ceiling measured beside it)" if name in nearby else ""
        table.add_row(name, f"{value:.2f}×{beside}", f"≥ {TARGETS[name]}×", _verdict(value >= TARGETS[name]))
    console.print(table)


def save(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """results.json and results.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**results, "ratios": ratios(results), "ratios_to_nearby_ceiling": nearby_ratios(results)}
    json_path = out / "results.json"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    png_path = out / "results.png"
    _chart(data, png_path)
    return json_path, png_path


def _chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    bars = {"model ceiling": data.get("model_ceiling", {}).get("passages_per_s"),
            "naive": data.get("naive_baseline", {}).get("passages_per_s"),
            "embed stage": data.get("embed_stage", {}).get("records_per_s"),
            "pipeline": data.get("pipeline", {}).get("passages_per_s")}
    bars = {k: v for k, v in bars.items() if v}
    left.bar(list(bars), list(bars.values()), color=["#555", "#c44", "#48c", "#4a4"][:len(bars)])
    left.set_title("passages/s (model-bound parts)")
    stages = {k: v["records_per_s"] for k, v in data.get("stages", {}).items()}
    middle.bar(list(stages), list(stages.values()), color="#48c")
    middle.axhline(STAGE_TARGET, color="#c44", linestyle="--", label=f"target {STAGE_TARGET:,}/s")
    middle.set_title("events/s per process (non-model stages)")
    middle.legend()
    sizes = data.get("model_ceiling", {}).get("by_batch_size", {})
    if sizes:
        right.plot([int(s) for s in sizes], [v["passages_per_s"] for v in sizes.values()], marker="o")
        right.set_xscale("log", base=2)
        right.set_xlabel("batch size")
        right.set_title("model ceiling by batch size (passages/s)")
    fig.suptitle(f"{data['meta']['machine']} — {data['meta']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
