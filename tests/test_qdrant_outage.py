"""The vector store becomes unreachable mid-stream: nothing is dead-lettered, skipped or lost, the stage says it is
stuck, and it resumes by itself. (No Qdrant server runs here, so the outage is injected at the client boundary of
the real store stage, on the real broker and Qdrant's local mode.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import load_topology
from pipeline.kafka.dlq import dead_letters
from pipeline.kafka.offsets import stage_lag
from pipeline.runtime.routes import StageUnreachable, call_route
from stages.store import point_id
from tests.conftest import lag, run_cli, start_stage, stop_all, stored_points, wait_for


def _metric(topo, name: str) -> float:
    try:
        text = call_route(topo, "store", "/metrics", timeout=5)
    except StageUnreachable:
        return -1.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_store_survives_a_qdrant_outage(topology, tmp_path: Path) -> None:
    path, _ = topology
    flag = tmp_path / "qdrant-is-down"
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["store"]["impl"] = "tests.flaky_store:FlakyStoreStage"
    raw["stages"]["store"]["options"]["outage_flag"] = str(flag)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    docs = [{"doc_id": f"q{i}", "text": f"Short note number {i} about files."} for i in range(40)]
    raw_topic = topo.stages["preprocess"].input

    def produce(part: list[dict], name: str) -> None:
        (tmp_path / name).write_text("".join(json.dumps(d) + "\n" for d in part))
        assert run_cli("-c", str(path), "produce", "-t", raw_topic, str(tmp_path / name)).returncode == 0

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    try:
        produce(docs[:20], "a.jsonl")
        wait_for(lambda: sum(r.committed or 0 for r in stage_lag(topo, "store")) > 0, 240,
                 "the first stored batch", procs, logs)
        flag.touch()  # Qdrant goes away
        produce(docs[20:], "b.jsonl")
        wait_for(lambda: _metric(topo, "pipeline_stuck_on_transient_error") == 1, 120,
                 "the store to report it is stuck", procs, logs)
        stuck_lag = sum(r.lag for r in stage_lag(topo, "store"))
        time.sleep(5)
        assert sum(r.lag for r in stage_lag(topo, "store")) >= stuck_lag > 0  # nothing committed past the failure
        assert _metric(topo, "pipeline_transient_retries_total") >= 2
        assert dead_letters(topo, "store") == []
        flag.unlink()  # Qdrant is back
        wait_for(lambda: lag(topo) == 0, 120, "the store to resume", procs, logs)
        assert _metric(topo, "pipeline_stuck_on_transient_error") == 0
        assert "transient failure, retrying" in (logs / "store.log").read_text()
    finally:
        stop_all(procs)
    assert dead_letters(topo, "store") == []
    assert set(stored_points(topo.stages["store"].options["path"])) == {point_id(d["doc_id"], 0) for d in docs}
