"""`python -m bench.profile_stage STAGE`: run one stage alone on a filled topic under py-spy; print where time goes."""

from __future__ import annotations

import collections
import os
import subprocess
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import corpus  # noqa: E402
from bench.parts import SIM_SETTING, stage_inputs  # noqa: E402
from bench.harness import ROOT, Bench  # noqa: E402
from pipeline.config import load_topology  # noqa: E402
from stages.model import DEFAULT_MODEL  # noqa: E402

console = Console()


def summarise(raw: Path, top: int) -> tuple[Table, Table]:
    """Per thread, and per function (own time and time including callees), as shares of all samples."""
    threads, own, inclusive = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames, n = stack.split(";"), int(count)
        total += n
        threads[frames[0].split(": ", 1)[-1]] += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    by_thread = Table("thread", "share of samples", title="threads")
    for name, n in threads.most_common():
        by_thread.add_row(name, f"{n / total:.0%}")
    by_function = Table("function", "own", "with callees", title=f"top {top} functions by own time")
    for frame, n in own.most_common(top):
        by_function.add_row(frame, f"{n / total:.1%}", f"{inclusive[frame] / total:.1%}")
    return by_thread, by_function


def main(
    stage: str = typer.Argument(..., help="preprocess, embed, classify or store."),
    records: int = typer.Option(20000, help="Records to fill its input with (embed: passages of 300 documents)."),
    top: int = typer.Option(25, help="Functions to show."),
    broker_port: int = typer.Option(29092, help="Port of the broker it starts."),
    sim: bool = typer.Option(False, "--sim", help="embed: on the simulated accelerator, `records` passages."),
) -> None:
    """Fill the stage's input, start it, sample it with py-spy until it is done, and show the profile."""
    topology = load_topology(ROOT / "topics.yaml")
    if stage not in ("preprocess", "embed", "classify", "store"):
        raise typer.BadParameter("choose preprocess, embed, classify or store", param_hint="STAGE")
    passages = corpus.passages(topology, corpus.documents(300, 7))
    if stage == "preprocess":
        inputs = corpus.documents(records, 7, "alone")
    elif stage == "embed":
        inputs = corpus.cycle(passages, records) if sim else passages
    else:
        embedded, classified = stage_inputs(topology, passages, records, DEFAULT_MODEL, "cpu")
        inputs = embedded if stage == "classify" else classified
    with tempfile.TemporaryDirectory(prefix="profile-") as work:
        bench = Bench(Path(work), None, broker_port, "cpu")
        try:
            path, topo = bench.topology(f"profile-{stage}", embed=SIM_SETTING if sim else None)
            bench.fill(topo, topo.stages[stage].input, inputs)
            bench.start(path, stage)
            ready = bench.wait_ready(topo, [stage])
            raw = Path(work) / "profile.txt"
            spy = subprocess.Popen(["py-spy", "record", "-p", str(bench.procs[stage].pid), "-o", str(raw),
                                    "--format", "raw", "--threads", "--rate", "100", "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            done = bench.wait_count(topo, stage, len(inputs))
            spy.send_signal(2)
            spy.wait(30)
            console.print(f"{stage}: {len(inputs)} records in {done - ready:.1f} s "
                          f"({len(inputs) / (done - ready):,.0f}/s, sampled by py-spy, which slows it a little)")
            for table in summarise(raw, top):
                console.print(table)
        finally:
            bench.close()


if __name__ == "__main__":
    typer.run(main)
