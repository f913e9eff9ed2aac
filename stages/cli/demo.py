"""`pipeline demo`: broker, topics, four stages, the bundled sample in, labelled vectors out, results shown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.kafka import admin
from pipeline.commands.context import console, settings
from pipeline.config import Topology
from pipeline.dev.broker import DevBroker
from pipeline.errors import PipelineError
from pipeline.runtime.metrics import scrape
from pipeline.kafka.offsets import stage_lag, topic_end_offsets
from pipeline.kafka.produce import produce_file
from pipeline.runtime.routes import StageUnreachable, call_route
from pipeline.runtime.stage import stage_options
from pipeline.runtime.supervisor import Supervisor, worker_command
from stages.cli.commands import classify_stage, embed_query, embed_stage, search_store, store_stage

SAMPLE = Path(__file__).parents[1] / "data" / "sample.jsonl"


def _pending(topology: Topology) -> tuple[int, int]:
    """Messages consumed and still to consume, summed over every stage's input."""
    done = left = 0
    for name in topology.stages:
        for row in stage_lag(topology, name):
            left += row.lag
            done += row.end - row.start - row.lag
    return done, left


def ingest_topic(topology: Topology) -> str:
    """Where documents enter: the one stage input that no stage writes."""
    sources = topology.ingest_topics()
    if len(sources) != 1:
        raise PipelineError(f"{topology.source}: expected one topic that stages read and none writes (the ingest "
                            f"topic), found {len(sources)}: {', '.join(sources) or 'none'}")
    return sources[0]


def _dead_letters(topology: Topology) -> int:
    return sum(sum(topic_end_offsets(topology, s.dead_letter).values()) for s in topology.stages.values())


def _wait_until_ready(topology: Topology, supervisor: Supervisor, timeout: float = 180) -> None:
    store, embed = store_stage(topology), embed_stage(topology)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor.procs and any(p.poll() is not None for p in supervisor.procs.values()):
            raise PipelineError("a stage exited during start-up; see the logs in var/logs")
        try:
            call_route(topology, store, "/stats", {}, timeout=5)
            call_route(topology, embed, "/embed", {"texts": []}, timeout=5)
            return
        except StageUnreachable:
            time.sleep(1)
    raise PipelineError("the stages did not come up within 3 minutes; see the logs in var/logs")


def demo(
    ctx: typer.Context,
    sample: Path = typer.Option(SAMPLE, exists=True, dir_okay=False, help="JSON Lines of documents to send."),
    timeout: float = typer.Option(900, help="Seconds to wait for every passage to be stored."),
    keep_running: bool = typer.Option(False, help="Leave the stages running after the report."),
) -> None:
    """Run the whole pipeline on the bundled sample and report what came out."""
    s = settings(ctx)
    if not s.bootstrap:
        with console.status("starting the local Kafka broker ..."):
            state = DevBroker.default().up()
        s.use_bootstrap(state["bootstrap"])
    topology = s.topology()
    admin.create_missing(topology)
    log_dir = topology.resolve_path("var/logs")
    commands = {name: worker_command(name, 0, s.config, s.bootstrap) for name in topology.stages}
    supervisor = Supervisor(commands, log_dir=log_dir)
    supervisor.start()
    try:
        with console.status(f"starting {len(commands)} stages (loading the model; logs in {log_dir}) ..."):
            _wait_until_ready(topology, supervisor)
        dead_before = _dead_letters(topology)
        started = time.perf_counter()
        report = produce_file(topology, ingest_topic(topology), str(sample))
        if report.interrupted:
            raise KeyboardInterrupt
        if not report.ok:
            raise PipelineError(f"sample not sent whole: {len(report.rejected)} line(s) rejected "
                                f"{report.rejected[:3]}, {report.not_delivered} not delivered")
        columns = [TextColumn("processing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("stages", total=None)
            deadline = time.monotonic() + timeout
            while True:
                done, left = _pending(topology)
                progress.update(task, completed=done, total=done + left)
                if left == 0:
                    break
                if time.monotonic() > deadline:
                    raise PipelineError(f"{left} message(s) still unprocessed after {timeout:.0f}s")
                if any(p.poll() is not None for p in supervisor.procs.values()):
                    raise PipelineError(f"a stage exited; see the logs in {log_dir}")
                time.sleep(0.5)
        elapsed = time.perf_counter() - started
        _report(topology, report.sent, elapsed, _dead_letters(topology) - dead_before, sample)
        _stage_table(topology)
    finally:
        if keep_running:
            console.print("stages keep running; stop them with Ctrl-C")
            supervisor.run()
        else:
            supervisor.stop()
    console.print("stages stopped; the broker keeps running (`pipeline dev down` stops it)")


def _stage_table(topology: Topology) -> None:
    """Per stage, from its /metrics: records in and out, busy time, and records/s while busy."""
    table = Table("stage", "records in", "records out", "busy s", "records/s busy", "model s",
                  title="per stage (this run)")
    for name in topology.stages:
        values = scrape(call_route(topology, name, "/metrics"))
        busy = values.get("pipeline_batch_seconds_sum", 0.0)
        records = values.get("pipeline_events_in_total", 0.0)
        table.add_row(name, f"{records:.0f}", f"{values.get('pipeline_events_out_total', 0):.0f}", f"{busy:.1f}",
                      f"{records / busy:,.0f}" if busy else "-", f"{values.get('pipeline_process_seconds_sum', 0):.1f}")
    console.print(table)


def _report(topology: Topology, docs: int, elapsed: float, dead: int, sample: Path) -> None:
    store = store_stage(topology)
    stats = call_route(topology, store, "/stats", {})
    quality = call_route(topology, store, "/quality", {"truth": "label"})
    table = Table("documents in", "passages stored", "dead letters", "seconds", "documents/s", "passages/s",
                  title=f"demo: {' -> '.join(['produce', *topology.stages])}")
    table.add_row(str(docs), str(stats["points"]), str(dead), f"{elapsed:.1f}", f"{docs / elapsed:.1f}",
                  f"{stats['points'] / elapsed:.1f}")
    console.print(table)
    console.print(f"classification against the sample's labels: accuracy {quality['accuracy']:.3f}, "
                  f"macro-F1 {quality['macro_f1']:.3f} over {quality['n']} passages "
                  f"({stage_options(topology, classify_stage(topology)).mode})")
    first = json.loads(sample.read_text().splitlines()[0])
    query = first["text"].split(".")[0][:200]
    hits = search_store(topology, {"vector": embed_query(topology, [query])[0].tolist(), "k": 3})
    table = Table("score", "label", "doc id", "snippet", title=f"search: {query!r}")
    for hit in hits:
        p = hit["payload"]
        table.add_row(f"{hit['score']:.3f}", p["label"], escape(p["doc_id"]), escape(p["text"][:80]))
    console.print(table)
