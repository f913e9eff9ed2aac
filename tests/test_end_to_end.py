"""End to end on the real path: Kafka broker, four Faust stage processes, the bundled model, Qdrant local mode.
Stages are killed (SIGKILL) mid-stream and restarted: nothing may be lost or duplicated."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from pipeline.config import Topology
from pipeline.kafka.offsets import stage_lag
from pipeline.runtime.stage import Incoming, load_stage
from stages.store import point_id
from tests.conftest import ROOT, run_cli, stop_all, stored_points
from tests.conftest import lag as _lag
from tests.conftest import start_stage as _start
from tests.conftest import wait_for as _wait_for

SAMPLE = ROOT / "stages" / "data" / "sample.jsonl"


def _expected_points(topology: Topology, docs: list[dict]) -> set[str]:
    stage = load_stage(topology, "preprocess")
    stage.setup()
    results = stage.process([Incoming(d, None, "t", 0, i, 0) for i, d in enumerate(docs)])
    return {point_id(p["doc_id"], p["passage_index"]) for r in results for p in r}


def test_pipeline_end_to_end_with_crashes(topology, tmp_path: Path) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    lines = SAMPLE.read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    # Long documents first, so that some are split into several passages.
    chosen = sorted(docs, key=lambda d: -len(d["text"]))[:15] + docs[:45]
    expected = _expected_points(topo, chosen)
    assert len(expected) > len(chosen)  # some documents were split
    first_half, second_half = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first_half.write_text("".join(json.dumps(d) + "\n" for d in chosen[:30]))
    second_half.write_text("".join(json.dumps(d) + "\n" for d in chosen[30:]))
    raw_topic = topo.stages["preprocess"].input

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: _start(path, name, logs) for name in topo.stages}
    try:
        assert run_cli("-c", str(path), "produce", "-t", raw_topic, str(first_half)).returncode == 0
        stats = lambda: run_cli("-c", str(path), "search", "anything", "-k", "1", timeout=120)  # noqa: E731
        # Crash embed and store as soon as the first vectors are stored, then produce more and restart them.
        _wait_for(lambda: sum(r.committed or 0 for r in stage_lag(topo, "store")) > 0, 240,
                  "the first stored passages", procs, logs)
        for name in ("embed", "store"):
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait()
        assert run_cli("-c", str(path), "produce", "-t", raw_topic, str(second_half)).returncode == 0
        for name in ("embed", "store"):
            procs[name] = _start(path, name, logs)
        _wait_for(lambda: _lag(topo) == 0, 300, "every stage to catch up", procs, logs)

        # A short document's own text finds that document first (texts in the sample are unique).
        target = next(d for d in chosen[30:] if len(d["text"]) < 500)
        found = run_cli("-c", str(path), "search", " ".join(target["text"].split()), "-k", "3", timeout=120)
        assert found.returncode == 0, found.stderr
        first_row = next(line for line in found.stderr.splitlines() if "│" in line and "py:" in line)
        assert f" {target['doc_id']} " in first_row
        assert stats().returncode == 0
    finally:
        stop_all(procs)

    # The store stage has stopped, so the test can open Qdrant's folder itself.
    points = stored_points(topo.stages["store"].options["path"])
    assert set(points) == expected  # none missing, none extra
    labels = set(topo.stages["classify"].options["labels"])
    for pid, payload in points.items():
        assert payload["label"] in labels
        assert payload["model_id"] == "all-MiniLM-L6-v2"
        assert payload["lineage"]["topic"] == raw_topic and payload["lineage"]["ingest_time_ms"] > 0
        assert pid == point_id(payload["doc_id"], payload["passage_index"])
