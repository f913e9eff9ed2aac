"""The domain commands on the real path: classifier training, the demo, and `pipeline run` errors."""

from __future__ import annotations

import re
from pathlib import Path

from stages.classifier import Head
from tests.conftest import ROOT, run_cli


def test_classifier_train_reports_and_saves_a_head(tmp_path: Path) -> None:
    out = tmp_path / "head.npz"
    done = run_cli("classifier", "train", str(ROOT / "stages/data/train.jsonl"), "--out", str(out), "--folds", "3")
    assert done.returncode == 0, done.stderr
    rows = {m[0]: (float(m[1]), float(m[2])) for m in
            re.findall(r"│ (this head|scikit-learn)[^│]*│ ([\d.]+)\s*│ ([\d.]+)", done.stderr)}
    assert set(rows) == {"this head", "scikit-learn"}
    assert rows["this head"][1] >= rows["scikit-learn"][1] - 0.02  # as good as the linear ceiling
    assert rows["this head"][0] > 0.6
    head = Head.load(out)
    assert head.model_id == "all-MiniLM-L6-v2" and len(head.labels) == 6


def test_run_unknown_stage_is_an_error() -> None:
    done = run_cli("run", "nope")
    assert done.returncode == 2
    assert "no stage 'nope' in topics.yaml" in done.stderr and "Traceback" not in done.stderr


def test_demo_runs_the_whole_pipeline(topology) -> None:
    path, topo = topology
    done = run_cli("-c", str(path), "--bootstrap", topo.kafka.bootstrap, "demo", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = " ".join(done.stderr.split())
    row = re.search(r"│ 360 │ (\d+) │ (\d+) │", report)
    assert row, report[-2000:]
    assert int(row[1]) >= 360 and int(row[2]) == 0
    quality = re.search(r"accuracy ([\d.]+), macro-F1 ([\d.]+) over (\d+) passages", report)
    assert quality and int(quality[3]) == int(row[1]) and float(quality[1]) > 0.5
    assert "search:" in report and "stages stopped" in report


def test_search_where_and_collections_optimize_on_an_embedded_store(tmp_path: Path) -> None:
    """No stage runs: the commands open the store's Qdrant Edge folder themselves."""
    from pipeline.testing import run_stage
    from tests.conftest import write_topology

    path, _ = write_topology(tmp_path, "127.0.0.1:1")
    docs = [{"doc_id": d, "text": f"{text} Second sentence of {d}."} for d, text in
            (("sock", "Open a TCP socket to the server."), ("csv", "Parse a CSV file into rows."),
             ("lock", "Guard shared state with a lock between threads."))]
    records = docs
    for stage in ("preprocess", "embed", "classify", "store"):
        run = run_stage(stage, records, path)
        assert run.dead_letters == []
        records = run.outputs
    found = run_cli("-c", str(path), "search", "network socket", "-k", "3", "--where", "doc_id=csv",
                    "--where", "passage_index=0", timeout=120)
    assert found.returncode == 0, found.stderr
    rows = [line for line in found.stderr.splitlines() if "│" in line and " csv " in line]
    assert len(rows) == 1 and " sock " not in found.stderr
    assert "vector store" in found.stderr and " ms" in found.stderr  # timing shown
    bad = run_cli("-c", str(path), "search", "x", "--where", "nokey")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
    optimized = run_cli("-c", str(path), "collections", "optimize")
    assert optimized.returncode == 0, optimized.stderr
    assert "docs--all-MiniLM-L6-v2: 3 points" in optimized.stderr and "done in" in optimized.stderr
    listed = run_cli("-c", str(path), "collections", "list")
    assert listed.returncode == 0 and "in HNSW index" in listed.stderr
