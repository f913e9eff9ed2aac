"""`python -m bench`: run the benchmark's parts (bench/parts.py and any registered since), print one table of
ratios against targets, and save the figures and a chart."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bench.parts  # noqa: E402,F401  (registers the built-in parts)
from bench import corpus, report  # noqa: E402
from bench.context import Context  # noqa: E402
from bench.harness import ROOT  # noqa: E402
from bench.rows import PARTS  # noqa: E402
from pipeline.config import load_topology  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from stages.model import DEFAULT_MODEL  # noqa: E402

# More parts register themselves on import, one line each.
from bench import search  # noqa: E402,F401  (Qdrant Edge: latency, recall, restart, the store stage)
from bench import gateway  # noqa: E402,F401  (the NATS gateway; not a default part: --parts gateway)

console = Console()


def _machine(device: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    text = f"{os.cpu_count()} cores {cpu}"
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    return text


def main(
    docs: int = typer.Option(600, min=10, help="Documents for the embed, naive and pipeline parts."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: a minute or two on 2 cores."),
    device: str = typer.Option("auto", help="Model device: auto (CUDA if present), cpu or cuda."),
    parts: str = typer.Option(None, help="Comma-separated parts to run (default: every default part)."),
    stage_records: int = typer.Option(20000, min=100, help="Records for each light stage alone."),
    steady_seconds: float = typer.Option(30, min=2, help="Seconds of steady traffic for the latency figure."),
    out: Path = typer.Option(ROOT / "bench" / "results", help="Folder for NAME.json and NAME.png."),
    name: str = typer.Option("results", help="File name of the results, without suffix."),
    bootstrap: str = typer.Option(None, help="Use this broker instead of starting one."),
    broker_port: int = typer.Option(29092, help="Port of the broker the benchmark starts."),
    port_shift: int = typer.Option(10000, help="Added to each stage's web port (topics.yaml) in the benchmark."),
    seed: int = typer.Option(7, help="Seed of the generated documents."),
) -> None:
    """Run the benchmark's parts, print the one table of ratios and write OUT/NAME.json and OUT/NAME.png."""
    chosen = [p.strip() for p in parts.split(",") if p.strip()] if parts else \
        [p.name for p in PARTS.values() if p.default]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise typer.BadParameter(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}",
                                 param_hint="--parts")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("use auto, cpu or cuda", param_hint="--device")
    if quick:
        docs, stage_records, steady_seconds = min(docs, 80), min(stage_records, 3000), min(steady_seconds, 8)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    topology = load_topology(ROOT / "topics.yaml")
    documents = corpus.documents(docs, seed)
    passages = corpus.passages(topology, documents)
    results: dict = {"meta": {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(device),
        "device": device, "command": " ".join(["python -m bench", *sys.argv[1:]]), "documents": docs,
        "passages": len(passages), "model": DEFAULT_MODEL, "seed": seed, "parts": chosen}}
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        ctx = Context(device, quick, DEFAULT_MODEL, topology, documents, passages, seed, stage_records,
                      steady_seconds, Path(work), bootstrap, broker_port, port_shift, console, results)
        try:
            for name_ in chosen:
                p = PARTS[name_]
                with console.status(f"{name_}: {p.help}"):
                    results[name_] = p.run(ctx)
        finally:
            ctx.close()
    report.show(results, console)
    json_path, png_path = report.save(results, out, name)
    console.print(f"wrote {json_path} and {png_path}")


def run() -> None:
    try:
        typer.run(main)
    except PipelineError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    run()
