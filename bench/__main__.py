"""`python -m bench`: measure the model ceiling, a naive baseline, each stage and the pipeline; print and save."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import corpus, measure, report  # noqa: E402
from bench.harness import ROOT, Bench  # noqa: E402
from pipeline.config import load_topology  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.runtime.stage import Incoming, load_stage  # noqa: E402
from stages.model import DEFAULT_MODEL, encode, load_model, model_id, to_bytes  # noqa: E402

PARTS = ("ceiling", "naive", "embed", "stages", "pipeline", "search")
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
    quick: bool = typer.Option(False, "--quick", help="Small sizes: about a minute on 2 cores."),
    device: str = typer.Option("auto", help="Model device: auto (CUDA if present), cpu or cuda."),
    parts: str = typer.Option(",".join(PARTS), help=f"Comma-separated parts to run: {', '.join(PARTS)}."),
    stage_records: int = typer.Option(20000, min=100, help="Records for each non-model stage alone."),
    steady_seconds: float = typer.Option(30, min=2, help="Seconds of steady traffic for the latency figure."),
    out: Path = typer.Option(ROOT / "bench" / "results", help="Folder for results.json and results.png."),
    bootstrap: str = typer.Option(None, help="Use this broker instead of starting one."),
    broker_port: int = typer.Option(29092, help="Port of the broker the benchmark starts."),
    seed: int = typer.Option(7, help="Seed of the generated documents."),
) -> None:
    """Run the benchmark and write OUT/results.json and OUT/results.png."""
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        raise typer.BadParameter(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}",
                                 param_hint="--parts")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("use auto, cpu or cuda", param_hint="--device")
    if quick:
        docs, stage_records, steady_seconds = min(docs, 80), min(stage_records, 3000), min(steady_seconds, 8)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DEFAULT_MODEL
    topology = load_topology(ROOT / "topics.yaml")
    documents = corpus.documents(docs, seed)
    passages = corpus.passages(topology, documents)
    results: dict = {"meta": {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(device),
        "device": device, "command": " ".join(["python -m bench", *sys.argv[1:]]), "documents": docs,
        "passages": len(passages), "model": model, "seed": seed}}
    texts = [p["text"] for p in passages]
    sample = texts[:128] if quick else texts[:400]
    if "ceiling" in chosen:
        with console.status("model ceiling: SentenceTransformer.encode alone ..."):
            sizes = [8, 32] if quick else ([4, 8, 16, 32, 64] if device == "cpu" else [32, 64, 128, 256, 512])
            results["model_ceiling"] = measure.model_ceiling(sample if device == "cpu" else texts, model, device,
                                                             sizes)

    def nearby_ceiling() -> float | None:
        """The model ceiling again, briefly, just before a model-bound part. This machine's speed drifts
        (±30% over minutes), so each part is also compared with the ceiling measured next to it."""
        if "model_ceiling" not in results:
            return None
        size = results["model_ceiling"]["best_batch_size"]
        return measure.model_ceiling(texts[:128], model, device, [size])["passages_per_s"]

    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        bench = Bench(Path(work), bootstrap, broker_port, device)
        try:
            if "naive" in chosen:
                with console.status("naive baseline: one message at a time ..."):
                    results["naive_baseline"] = measure.naive_baseline(bench, passages[:60 if quick else 300], model)
            if "embed" in chosen:
                with console.status(f"embed stage alone on {len(passages)} passages ..."):
                    nearby = nearby_ceiling()
                    results["embed_stage"] = {**measure.stage_alone(bench, "embed", passages),
                                              "nearby_ceiling_passages_per_s": nearby}
            if "stages" in chosen:
                embedded, classified = _stage_inputs(topology, passages, stage_records, model, device)
                results["stages"] = {}
                for stage, records in (("preprocess", corpus.documents(stage_records, seed, "alone")),
                                       ("classify", embedded), ("store", classified)):
                    with console.status(f"{stage} alone on {len(records)} records ..."):
                        results["stages"][stage] = measure.stage_alone(bench, stage, records)
            if "pipeline" in chosen:
                steady_docs = corpus.documents(docs * 4, seed + 1, "steady")
                counts = Counter(p["doc_id"] for p in corpus.passages(topology, steady_docs))
                with console.status(f"whole pipeline: {docs} documents, then {steady_seconds:g} s of steady "
                                    "traffic ..."):
                    nearby = nearby_ceiling()
                    results["pipeline"] = {**measure.whole_pipeline(
                        bench, documents, len(passages), [(d, counts[d["doc_id"]]) for d in steady_docs],
                        steady_seconds), "nearby_ceiling_passages_per_s": nearby}
            if "search" in chosen:
                from bench import search

                with console.status("search: Qdrant Edge at 100,000 passages ..."):
                    results["search"] = search.run(bench, passages, model, device, 10_000 if quick else 100_000,
                                                    stage_records=stage_records)
                console.print("\n".join(search.lines(results["search"])), highlight=False)
        finally:
            bench.close()
    report.show(results, console)
    json_path, png_path = report.save(results, out)
    console.print(f"wrote {json_path} and {png_path}")


def _stage_inputs(topology, passages: list[dict], n: int, model: str, device: str) -> tuple[list, list]:
    """`n` embedded and `n` classified records, cycling real passages and vectors under fresh ids."""
    base = passages[:256]
    vectors = encode(load_model(model, device), [p["text"] for p in base], batch_size=16)
    mid = model_id(model)
    embedded = [{**p, "model_id": mid, "dim": int(v.shape[0]), "vector": to_bytes(v)} for p, v in zip(base, vectors)]
    classify = load_stage(topology, "classify")
    classify.setup()
    labelled = [r[0] for r in classify.process([Incoming(e, None, "", 0, i, 0) for i, e in enumerate(embedded)])]

    def cycle(records: list[dict]) -> list[dict]:
        return [{**records[i % len(records)], "doc_id": f"{records[i % len(records)]['doc_id']}~{i // len(records)}"}
                for i in range(n)]

    return cycle(embedded), cycle(labelled)


def run() -> None:
    try:
        typer.run(main)
    except PipelineError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    run()
