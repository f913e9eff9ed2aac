"""`python -m bench.levers`: Faust's cheap levers for the light stages, as interleaved A/B runs.

Each lever is a Faust setting given through its environment variable (Faust reads them over the app's own
arguments), so the stage's code is unchanged between A and B. For every lever and round it runs, back to
back: the bare Faust agent with the default settings, then with the lever, then classify alone likewise,
alternating which of A and B goes first. It also runs the bare agent acking only the last event per
partition of each take and reports where its group committed, against the partitions' ends."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import corpus, measure  # noqa: E402
from bench.harness import ROOT, Bench  # noqa: E402
from bench.parts import stage_inputs  # noqa: E402
from pipeline.config import load_topology  # noqa: E402
from stages.model import DEFAULT_MODEL  # noqa: E402

LEVERS = {
    "broker_max_poll_records=2000": {"BROKER_MAX_POLL_RECORDS": "2000"},
    "stream_buffer_maxsize=16384": {"STREAM_BUFFER_MAXSIZE": "16384"},
    "consumer_max_fetch_size=8MiB": {"CONSUMER_MAX_FETCH_SIZE": str(8 * 2**20)},
}
console = Console()


def main(
    records: int = typer.Option(10000, help="Records per run."),
    rounds: int = typer.Option(3, help="A/B pairs per lever and subject."),
    levers: str = typer.Option(",".join(LEVERS), help="Comma-separated levers to try."),
    broker_port: int = typer.Option(29092, help="Port of the broker it starts."),
    port_shift: int = typer.Option(10000, help="Added to each stage's web port."),
    out: Path = typer.Option(ROOT / "bench" / "results" / "levers.json", help="Where to write the figures."),
) -> None:
    """Interleaved A/B of each lever on a bare Faust agent and on classify alone; and the ack-last check."""
    topology = load_topology(ROOT / "topics.yaml")
    passages = corpus.passages(topology, corpus.documents(80, 7))
    embedded, _ = stage_inputs(topology, passages, records, DEFAULT_MODEL, "cpu")
    found: dict = {"records": records, "rounds": rounds, "levers": {}}
    with tempfile.TemporaryDirectory(prefix="levers-") as work:
        bench = Bench(Path(work), None, broker_port, "cpu", port_shift)
        try:
            with console.status("bare agent acking only the last event per partition ..."):
                found["ack_last"] = measure.bare_faust(bench, "classify", embedded, ack="last")
            for name in [n.strip() for n in levers.split(",") if n.strip()]:
                env = LEVERS[name]
                runs: dict = {"bare": {"A": [], "B": []}, "classify": {"A": [], "B": []}}
                for i in range(rounds):
                    order = ("A", "B") if i % 2 == 0 else ("B", "A")
                    for subject in ("bare", "classify"):
                        for arm in order:
                            with console.status(f"{name}: {subject} {arm}, round {i + 1}/{rounds} ..."):
                                extra = env if arm == "B" else None
                                run = (measure.bare_faust(bench, "classify", embedded, env=extra) if subject == "bare"
                                       else measure.stage_alone(bench, "classify", embedded, env=extra))
                            runs[subject][arm].append(run["records_per_s"])
                found["levers"][name] = runs
        finally:
            bench.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=2, default=str) + "\n")
    table = Table("lever", "subject", "A: default (events/s)", "B: lever (events/s)", "B ÷ A (median of pairs)",
                  title=f"Faust levers, {records} classify records, {rounds} interleaved pairs")
    for name, runs in found["levers"].items():
        for subject, arms in runs.items():
            ratios = [b / a for a, b in zip(arms["A"], arms["B"])]
            table.add_row(name, subject, ", ".join(f"{v:,.0f}" for v in arms["A"]),
                          ", ".join(f"{v:,.0f}" for v in arms["B"]), f"{statistics.median(ratios):.2f}×")
    console.print(table)
    last = found["ack_last"]
    console.print(f"ack only the last event per partition: {last['records_per_s']:,.0f} events/s; committed "
                  f"{last['committed']} against ends {last['end']}")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
