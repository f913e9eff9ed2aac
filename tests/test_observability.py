"""Metrics, probes and `pipeline status` against stage processes on the real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

from confluent_kafka import Producer

from pipeline.runtime.metrics import scrape
from pipeline.runtime.routes import StageUnreachable, call_route
from pipeline.kafka.status import StageStatus, Throughput
from tests.conftest import ROOT, lag, run_cli, start_stage, stop_all, wait_for, write_topology


def _page(topo, stage: str, path: str, replica: int) -> str:
    spec = topo.stages[stage]
    return call_route(topo.model_copy(update={"stages": {
        stage: spec.model_copy(update={"web_port": spec.web_port + 100 * replica})}}), stage, path, timeout=5)


def _metrics(topo, replicas: int = 2) -> dict[str, float]:
    total: dict[str, float] = {}
    for replica in range(replicas):
        for name, value in scrape(_page(topo, "preprocess", "/metrics", replica)).items():
            total[name] = total.get(name, 0.0) + value
    return total


def _status(path: Path) -> dict:
    done = run_cli("-c", str(path), "status", "--json")
    assert done.returncode == 0, done.stderr
    return {row["stage"]: row for row in json.loads(done.stdout)["stages"]}


def test_metrics_probes_and_status(kafka: str, tmp_path: Path) -> None:
    path, topo = write_topology(tmp_path, kafka, partitions=1)  # one partition, two replicas: one idles
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    docs = [json.loads(line) for line in (ROOT / "stages/data/sample.jsonl").read_text().splitlines()][:20]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    raw = topo.stages["preprocess"].input
    assert run_cli("-c", str(path), "produce", "-t", raw, str(source)).returncode == 0
    bad = Producer({"bootstrap.servers": kafka})
    bad.produce(raw, b"not avro at all", b"bad")
    bad.flush(10)

    # A stopped stage: its whole input is lag, nobody is in the group.
    before = _status(path)["preprocess"]
    assert (before["lag"], before["members"], before["dead_letters"]) == (21, 0, 0)

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {"preprocess": start_stage(path, "preprocess", logs)}
    try:
        wait_for(lambda: lag(topo, ["preprocess"]) == 0, 120, "preprocess", procs, logs)
        procs["preprocess-1"] = start_stage(path, "preprocess", logs, "--replica", "1", name="preprocess-1")

        def idle_replica_answers() -> bool:
            try:
                _page(topo, "preprocess", "/healthz", 1)
                return True
            except StageUnreachable:
                return False

        wait_for(idle_replica_answers, 120, "the second replica's web server", procs, logs)
        time.sleep(5)  # let the rebalance settle: the single partition stays with one replica
        ready = []
        for replica in (0, 1):
            try:
                ready.append(json.loads(_page(topo, "preprocess", "/ready", replica)))
            except StageUnreachable as exc:  # the idle replica: model loaded, no partition
                assert "HTTP 503" in str(exc) and '"model_loaded":true,"partitions":0' in str(exc)
                ready.append(None)
        assert sorted(r is not None for r in ready) == [False, True]  # ready only with a partition assigned
        assert [r for r in ready if r][0]["partitions"] == 1

        m = _metrics(topo)
        assert m["pipeline_events_in_total"] == 21
        assert m['pipeline_dead_lettered_total'] == 1
        assert m["pipeline_events_out_total"] >= 20
        assert m["pipeline_batch_size_count"] >= 1 and m["pipeline_batch_fill_ratio_count"] >= 1
        assert m["pipeline_process_seconds_sum"] > 0
        assert m["pipeline_ingest_to_now_seconds_count"] == 20  # the good records, aged from ingest
        wait_for(lambda: "pipeline_consumer_lag" in _metrics(topo) and _metrics(topo)["pipeline_consumer_lag"] == 0,
                 30, "the lag gauge", procs, logs)

        # Values move when events flow.
        assert run_cli("-c", str(path), "produce", "-t", raw, str(source)).returncode == 0
        wait_for(lambda: _metrics(topo)["pipeline_events_in_total"] == 41, 60, "20 more records", procs, logs)
        wait_for(lambda: _status(path)["preprocess"]["lag"] == 0, 30, "the commit (every second)", procs, logs)
        after = _status(path)["preprocess"]
        assert (after["lag"], after["members"], after["dead_letters"]) == (0, 2, 1)
        table = run_cli("-c", str(path), "status", "--interval", "1")
        assert table.returncode == 0 and "preprocess" in table.stderr and "STABLE" in table.stderr.upper()
    finally:
        stop_all(procs)


def test_throughput_is_over_the_last_window() -> None:
    def reading(consumed: int) -> dict[str, StageStatus]:
        return {"s": StageStatus("s", "g", "STABLE", 1, 0, consumed, 0)}

    rates = Throughput(window=60)
    rates.add(reading(0), now=0)
    assert rates.rate("s") is None  # one reading is no rate
    for t in range(10, 130, 10):  # 100 records/s for the first minute, then 10/s
        rates.add(reading(100 * min(t, 60) + 10 * max(0, t - 60)), now=t)
    rate, seconds = rates.rate("s")
    assert seconds == 60 and rate == 10  # only the last minute counts
