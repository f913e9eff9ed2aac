"""The benchmark on the real path (broker, stage processes, model, Qdrant) at a tiny size, and its arithmetic."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import ratios
from pipeline.runtime.metrics import quantile, scrape
from tests.conftest import ROOT


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 10.0), (0.5, 60.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1 + 0.4 * 40 / 50)
    assert quantile(buckets, 0.99) == pytest.approx(0.5 + 0.5 * 39 / 40)
    assert quantile(buckets, 0.05) == pytest.approx(0.05)
    assert math.isnan(quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5))  # no samples, no figure


def test_scrape_sums_labels_and_keeps_buckets() -> None:
    text = ('# TYPE x_total counter\nx_total{stage="a"} 2\nx_total{stage="b"} 3\n'
            '# TYPE h histogram\nh_bucket{le="0.5",stage="a"} 1\nh_bucket{le="+Inf",stage="a"} 4\n'
            'h_count{stage="a"} 4\nh_sum{stage="a"} 2.5\n')
    values = scrape(text)
    assert values["x_total"] == 5 and values["h_bucket{0.5}"] == 1 and values["h_bucket{+Inf}"] == 4


def test_ratios() -> None:
    results = {"model_ceiling": {"passages_per_s": 40}, "naive_baseline": {"passages_per_s": 20},
               "embed_stage": {"records_per_s": 36}, "pipeline": {"passages_per_s": 32}}
    assert ratios(results) == {"embed_stage / model_ceiling": 0.9, "pipeline / model_ceiling": 0.8,
                               "pipeline / naive_baseline": 1.6}


@pytest.mark.kafka
def test_bench_quick_run_measures_every_part(kafka: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--docs", "12", "--stage-records", "300", "--steady-seconds", "3",
         "--bootstrap", kafka, "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    passages = data["meta"]["passages"]
    assert passages >= 12 and data["model_ceiling"]["passages_per_s"] > 0
    assert data["naive_baseline"]["passages"] == passages  # fewer passages than the naive cap: all of them
    assert data["embed_stage"]["records"] == passages and data["embed_stage"]["records_per_s"] > 0
    assert {s: v["records"] for s, v in data["stages"].items()} == {"preprocess": 300, "classify": 300, "store": 300}
    pipeline = data["pipeline"]
    assert pipeline["passages"] == passages and pipeline["documents"] == 12
    assert pipeline["latency_samples"] > 0 and 0 < pipeline["latency_p50_s"] <= pipeline["latency_p99_s"] < 60
    assert set(data["ratios"]) == {"embed_stage / model_ceiling", "pipeline / model_ceiling",
                                   "pipeline / naive_baseline"}
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pipeline / naive_baseline" in done.stdout


def test_bench_refuses_an_unknown_part() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--parts", "ceiling,gpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "unknown part(s) gpu" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
