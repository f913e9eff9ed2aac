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
