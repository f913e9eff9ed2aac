"""`python -m bench.runtime_ab`: each stage on the previous runtime and on this one, side by side with the librdkafka
reference, in one run on one broker: the before and after of a runtime change.

"Before" is a git revision (default: the last one whose stages Faust fed itself, one event at a time), checked
out into a temporary worktree and run with its packages first on the path; "after" is this tree, with
`batch.depth` 3 (pipelined) and, as a third arm, 1 (one batch after the other, on the same loop). Every round
runs the arms back to back in a rotating order, so the machine's drift falls on all of them alike. The reference
of a light stage is the librdkafka loop (bench/reference.py); of the embed stage, the model's ceiling in process
at the stage's CPU setting (2,048 tokens x 64 per pass)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import ceiling, corpus, measure  # noqa: E402
from bench.harness import ROOT, Bench  # noqa: E402
from bench.parts import stage_inputs  # noqa: E402
from pipeline.config import load_topology  # noqa: E402
from stages.model import DEFAULT_MODEL  # noqa: E402

BEFORE = "ef87edc"  # the runtime of Faust's own consumer: noack_take, a serial take -> work -> ack loop
STAGES = {"preprocess", "classify", "store", "embed"}
console = Console()


def _arms(before_tree: Path) -> dict[str, dict[str, Any]]:
    """How each arm runs the stage: the environment of its process and the batch depth in its topics.yaml."""
    # PYTHONSAFEPATH: `python -m` would put the working directory (this tree) first on sys.path otherwise.
    return {"before": {"env": {"PYTHONPATH": str(before_tree), "PYTHONSAFEPATH": "1"}, "depth": None},
            "after, depth 1": {"env": None, "depth": 1},
            "after": {"env": None, "depth": None}}


def _records(stage: str, n: int) -> list[dict[str, Any]]:
    topology = load_topology(ROOT / "topics.yaml")
    if stage == "preprocess":
        return corpus.documents(n, 7, "ab")
    if stage == "embed":
        return corpus.cycle(corpus.passages(topology, corpus.documents(400, 7)), n)
    embedded, classified = stage_inputs(topology, corpus.passages(topology, corpus.documents(80, 7)), n,
                                        DEFAULT_MODEL, "cpu")
    return embedded if stage == "classify" else classified


def _rate(bench: Bench, stage: str, data: list[dict[str, Any]], arm: dict[str, Any] | None) -> float:
    """Records/s of one arm, or of the reference (arm None): the librdkafka loop, or for embed the model alone in
    process at the stage's CPU setting, its passes cut within takes of 64 as the stage cuts them."""
    if arm is None and stage == "embed":
        return ceiling.measure([r["text"] for r in data], DEFAULT_MODEL, "cpu", 2048, 64, take=64)["passages_per_s"]
    if arm is None:
        return measure.librdkafka_reference(bench, stage, data)["records_per_s"]
    batch = {"depth": arm["depth"]} if arm["depth"] else None
    return measure.stage_alone(bench, stage, data, env=arm["env"], batch=batch)["records_per_s"]


def main(
    before: str = typer.Option(BEFORE, help="The git revision of the previous runtime."),
    stages: str = typer.Option("preprocess,classify,store", help="Comma-separated stages (embed: on the CPU)."),
    records: int = typer.Option(20000, min=100, help="Records per run (embed: a tenth of them)."),
    rounds: int = typer.Option(2, min=1, help="Rounds of all the arms per stage."),
    broker_port: int = typer.Option(29092, help="Port of the broker it starts."),
    port_shift: int = typer.Option(10000, help="Added to each stage's web port."),
    out: Path = typer.Option(ROOT / "bench" / "results" / "runtime_ab.json", help="Where to write the figures."),
) -> None:
    """Every stage on the previous runtime and on this one (pipelined, and with depth 1), with the reference."""
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - STAGES)
    if unknown or not chosen:
        raise typer.BadParameter(f"choose from {', '.join(sorted(STAGES))}", param_hint="--stages")
    found: dict[str, Any] = {"before": before, "records": records, "rounds": rounds, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="runtime-ab-") as work:
        tree = Path(work) / "before"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(tree), before], cwd=ROOT,
                               capture_output=True, text=True)
        if added.returncode != 0:
            raise typer.BadParameter(f"cannot check out {before}: {added.stderr.strip()}", param_hint="--before")
        bench = Bench(Path(work), None, broker_port, "cpu", port_shift)
        try:
            arms = _arms(tree)
            for stage in chosen:
                data = _records(stage, records // 10 if stage == "embed" else records)
                runs: dict[str, list[float]] = {name: [] for name in [*arms, "reference"]}
                for i in range(rounds):
                    order = [*arms, "reference"]
                    order = order[i % len(order):] + order[:i % len(order)]
                    for name in order:
                        with console.status(f"{stage}: {name}, round {i + 1}/{rounds} ..."):
                            runs[name].append(_rate(bench, stage, data, arms.get(name)))
                found["stages"][stage] = runs
        finally:
            bench.close()
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=2) + "\n")
    show(found)
    console.print(f"wrote {out}")


def show(found: dict[str, Any]) -> None:
    table = Table("stage", "arm", "records/s (each round)", "best", "÷ reference (best)", "÷ before (best)",
                  title=f"Runtime before ({found['before']}) and after, {found['records']:,} records, "
                        f"{found['rounds']} rounds")
    for stage, runs in found["stages"].items():
        reference, old = max(runs["reference"]), max(runs["before"])
        for arm, rates in runs.items():
            best = max(rates)
            table.add_row(stage, arm, ", ".join(f"{r:,.0f}" for r in rates), f"{best:,.0f}",
                          f"{best / reference:.2f}×", "" if arm == "reference" else f"{best / old:.2f}×")
        table.add_section()
    console.print(table)
    console.print("medians: " + "; ".join(f"{stage} {arm} {statistics.median(rates):,.0f}/s"
                                          for stage, runs in found["stages"].items() for arm, rates in runs.items()))


if __name__ == "__main__":
    typer.run(main)
