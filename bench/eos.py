"""`python -m bench.eos`: what exactly-once costs. Each light stage alone, and the whole pipeline, with
`delivery: at-least-once` and `delivery: exactly-once` (the default commit interval, 100 ms) in one run on one
broker, the arms back to back in a rotating order so the machine's drift falls on both alike; the pipeline's
ingest-to-stored latency is measured for both at the same steady rate (what the commit interval adds)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import corpus, measure  # noqa: E402
from bench.harness import ROOT, Bench  # noqa: E402
from bench.runtime_ab import _records  # noqa: E402
from pipeline.config import load_topology  # noqa: E402

MODES = ("at-least-once", "exactly-once")
LIGHT = {"preprocess", "classify", "store"}
console = Console()


def _pipeline(bench: Bench, docs: int, steady_seconds: float, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Both modes on the whole pipeline: the maximum rate, then latency at one steady rate for both (half the
    first at-least-once run's maximum)."""
    topology = load_topology(ROOT / "topics.yaml")
    batch = corpus.documents(docs, 7, "eos")
    passages = len(corpus.passages(topology, batch))
    steady_docs = corpus.documents(docs * 4, 8, "steady")
    counts = Counter(p["doc_id"] for p in corpus.passages(topology, steady_docs))
    steady = [(d, counts[d["doc_id"]]) for d in steady_docs]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    rate = None
    for i in range(rounds):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            with console.status(f"pipeline: {mode}, round {i + 1}/{rounds} ..."):
                found = measure.whole_pipeline(bench, batch, passages, steady, steady_seconds, delivery=mode,
                                               steady_rate=rate)
            rate = rate or found["steady_documents_per_s"]
            runs[mode].append(found)
    return runs


def main(
    stages: str = typer.Option("preprocess,classify,store", help="Comma-separated light stages."),
    records: int = typer.Option(20000, min=100, help="Records per run of a stage alone."),
    rounds: int = typer.Option(2, min=1, help="Rounds of both modes per stage."),
    pipeline_docs: int = typer.Option(300, min=0, help="Documents for the whole pipeline (0: skip it)."),
    steady_seconds: float = typer.Option(20.0, min=1, help="Seconds of steady load for the latency."),
    broker_port: int = typer.Option(29092, help="Port of the broker it starts."),
    port_shift: int = typer.Option(10000, help="Added to each stage's web port."),
    out: Path = typer.Option(ROOT / "bench" / "results" / "eos.json", help="Where to write the figures."),
) -> None:
    """Each light stage and the whole pipeline, at-least-once and exactly-once, side by side."""
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - LIGHT)
    if unknown:
        raise typer.BadParameter(f"choose from {', '.join(sorted(LIGHT))}", param_hint="--stages")
    found: dict[str, Any] = {"records": records, "rounds": rounds, "stages": {}, "pipeline": {}}
    with tempfile.TemporaryDirectory(prefix="bench-eos-") as work:
        bench = Bench(Path(work), None, broker_port, "cpu", port_shift)
        try:
            for stage in chosen:
                data = _records(stage, records)
                runs: dict[str, list[float]] = {mode: [] for mode in MODES}
                for i in range(rounds):
                    for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                        with console.status(f"{stage}: {mode}, round {i + 1}/{rounds} ..."):
                            rate = measure.stage_alone(bench, stage, data, delivery=mode)["records_per_s"]
                        runs[mode].append(rate)
                found["stages"][stage] = runs
            if pipeline_docs:
                found["pipeline"] = _pipeline(bench, pipeline_docs, steady_seconds, rounds)
        finally:
            bench.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=2) + "\n")
    show(found)
    console.print(f"wrote {out}")


def show(found: dict[str, Any]) -> None:
    table = Table("stage", "at-least-once, records/s", "exactly-once, records/s", "cost (medians)",
                  title=f"Exactly-once against at-least-once, {found['records']:,} records, {found['rounds']} rounds")
    for stage, runs in found["stages"].items():
        alo, eos = statistics.median(runs["at-least-once"]), statistics.median(runs["exactly-once"])
        table.add_row(stage, ", ".join(f"{r:,.0f}" for r in runs["at-least-once"]),
                      ", ".join(f"{r:,.0f}" for r in runs["exactly-once"]), f"{1 - eos / alo:+.1%}")
    console.print(table)
    if found["pipeline"]:
        table = Table("mode", "documents/s", "passages/s", "steady docs/s", "latency p50", "latency p99",
                      title="Whole pipeline (each round)")
        for mode, runs in found["pipeline"].items():
            for run in runs:
                table.add_row(mode, f"{run['documents_per_s']:,.1f}", f"{run['passages_per_s']:,.1f}",
                              f"{run['steady_documents_per_s']:,.1f}", f"{run['latency_p50_s']:.3f} s",
                              f"{run['latency_p99_s']:.3f} s")
        console.print(table)


if __name__ == "__main__":
    typer.run(main)
