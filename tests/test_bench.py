"""The benchmark on the real path (broker, stage processes, model, Qdrant) at a tiny size, and its arithmetic."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ceiling, parts  # noqa: F401  (bench.parts registers the built-in parts)
from bench.rows import Row, all_rows, part
from pipeline.runtime.metrics import quantile, scrape
from stages.embed import token_batches
from tests.conftest import PORT_SHIFT, ROOT


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



def test_row_ratio_and_target() -> None:
    assert Row("x", "stage", 36, "passages/s", "ceiling", 40, 0.9).ratio == pytest.approx(0.9)
    assert Row("x", "stage", 36, "passages/s", "ceiling", 40, 0.9).met is True
    assert Row("x", "stage", 35, "passages/s", "ceiling", 40, 0.9).met is False
    assert Row("x", "p99", 1.5, "s", "limit", 2.0, 1.0, at_most=True).met is True
    assert Row("x", "p99", 2.5, "s", "limit", 2.0, 1.0, at_most=True).met is False
    assert Row("x", "ceiling", 40, "passages/s").ratio is None and Row("x", "ceiling", 40, "passages/s").met is None
    assert Row("x", "fixed", 30, "passages/s", "ceiling", 40).met is None  # a ratio for information


def test_rows_divide_each_part_by_its_own_reference() -> None:
    sweep = {"max_tokens": 2048, "max_batch": 64, "passages_per_s": 40.0}
    results = {"meta": {"device": "cpu"},
               "ceiling": {"best": sweep, "passages_per_s": 40.0, "tokens_per_s": 6000, "passages": 100,
                           "settings": {"2048/64": sweep},
                           "fixed": {"best_batch_size": 16, "passages_per_s": 32.0, "by_batch_size": {16: 32.0}}},
               "naive": {"passages_per_s": 20.0},
               "embed": {"records_per_s": 27.0, "mean_batch": 60, "setting": sweep,
                         "ceiling": {"passages_per_s": 30.0}},
               "stages": {"classify": {"records_per_s": 3000.0, "process_records_per_s": 5000.0,
                                       "bare": {"records_per_s": 5000.0},
                                       "reference": {"records_per_s": 4000.0}}},
               "pipeline": {"passages_per_s": 24.0, "documents_per_s": 17.0, "ceiling": {"passages_per_s": 32.0},
                            "steady_documents_per_s": 8.5, "latency_p50_s": 0.4, "latency_p99_s": 1.5,
                            "latency_samples": 300}}
    got = {(r.label, r.reference_label): (round(r.ratio, 3) if r.ratio else None, r.met) for r in all_rows(results)}
    assert got == {
        ("model ceiling (in process, no Kafka; best of the sweep)", None): (None, None),
        ("encode at a fixed batch size (best: 16)", "model ceiling"): (0.8, None),
        ("naive loop (one consumer, one message at a time)", "model ceiling"): (0.5, None),
        ("embed stage alone, through the broker", "ceiling beside it"): (0.9, True),  # 27 / 30, not 27 / 40
        ("bare Faust agent on classify's input (take + ack, no work)", None): (None, None),
        ("librdkafka reference on classify's input (consume, decode, encode, produce, commit)", None): (None, None),
        ("classify alone", "librdkafka reference beside it"): (0.75, True),  # 3,000 / 4,000 against 0.6
        ("classify against the bare Faust agent", "bare Faust beside it"): (0.6, None),  # for information
        ("whole pipeline, produce → stored", "ceiling beside it"): (0.75, False),
        ("whole pipeline against the naive loop", "naive loop"): (1.2, True),
        ("latency p99, ingest → stored, at 8.5 documents/s", "limit"): (0.75, True),
    }
    targets = {r.label: r.target for r in all_rows({**results, "meta": {"device": "cuda"}})}
    assert targets["whole pipeline against the naive loop"] == 20.0
    assert targets["embed stage alone, against the H100 target"] == 1.0
    assert targets["classify alone"] == 0.6


def test_ceiling_sweep_is_coordinate_wise_and_measures_each_cut_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Budgets at the largest cap, then caps at the best budget; a setting that cuts the same passes as one
    already measured shares its figure; the passes come from the embed stage's own token_batches."""
    lengths = [10, 20, 30, 40, 50, 60, 70, 80]
    rates = {(100, 8): 5.0, (200, 8): 9.0, (400, 8): 7.0, (800, 8): 6.0, (200, 2): 8.0}
    measured = []

    class Model:
        max_seq_length = 256

    def fake_measure(texts, model, device, max_tokens, max_batch, repeats=1):
        measured.append((max_tokens, max_batch))
        return {"max_tokens": max_tokens, "max_batch": max_batch, "passages_per_s": rates[(max_tokens, max_batch)],
                "tokens_per_s": 1.0}

    monkeypatch.setattr(ceiling, "load_model", lambda model, device: Model())
    monkeypatch.setattr(ceiling, "stage_lengths", lambda texts, model, max_len: lengths)
    monkeypatch.setattr(ceiling, "measure", fake_measure)
    found = ceiling.sweep(["t"] * 8, "m", "cpu", budgets=[100, 200, 400, 800, 1600], caps=[2, 4, 8])
    # On a CPU a pass costs 80 padded tokens: from a budget of 400 up, two passes of four pad less than one of 8.
    assert token_batches(lengths, 1600, 8, 80) == token_batches(lengths, 400, 8, 80) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert token_batches(lengths, 200, 4, 80) == token_batches(lengths, 200, 8, 80)  # the budget binds first
    assert measured == [(100, 8),  # the process's warm-up, not kept
                        (100, 8), (200, 8), (400, 8), (200, 2)]
    assert found["settings"]["1600/8"]["same_as"] == "400/8" and found["settings"]["200/4"]["same_as"] == "200/8"
    # The best figure; among settings that cut the same passes, the smallest is reported.
    assert (found["best"]["max_tokens"], found["best"]["max_batch"]) == (200, 4) and found["passages_per_s"] == 9.0


def test_bench_parts_registry_refuses_a_name_twice() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        part("ceiling", "again", rows=lambda results: [])(lambda ctx: {})


def _gpu_sh(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "--device", "cpu", "--quick", "--python", sys.executable, "--docs", "10",
         "--out", str(tmp_path), "--port-shift", str(PORT_SHIFT), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "250"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert (tmp_path / "gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "gpu.md").read_text()
    assert f"torch {data['environment']['torch']}" in md and "| part | figure | divided by |" in md
    return done, data


def test_gpu_sh_on_cpu_without_a_broker(tmp_path: Path) -> None:
    """The fallback where no Kafka can run: the embed stage's batch path in process, labelled so."""
    done, data = _gpu_sh(tmp_path, "--no-broker")
    assert data["meta"]["parts"] == ["ceiling", "embed-inprocess"]
    passages = data["meta"]["passages"]
    assert data["embed-inprocess"]["records"] == passages and data["ceiling"]["passages"] == passages
    assert data["embed-inprocess"]["setting"] == {k: data["ceiling"]["best"][k] for k in ("max_tokens", "max_batch")}
    assert {r["reference_label"] for r in data["rows"] if r["part"] == "embed-inprocess"} == {"ceiling beside it"}
    assert set(data["ceiling"]["fixed"]["by_batch_size"]) == {"8", "32"}  # JSON keys
    assert "runs in process" in done.stdout and "batch path in process" in done.stdout


@pytest.mark.kafka
def test_gpu_sh_cpu_quick_through_the_broker(kafka: str, tmp_path: Path) -> None:
    """`bash bench/gpu.sh --device cpu --quick`: ceiling sweep (and fixed batches), naive loop, embed stage,
    pipeline."""
    done, data = _gpu_sh(tmp_path, "--bootstrap", kafka)
    passages = data["meta"]["passages"]
    assert data["meta"]["parts"] == ["ceiling", "naive", "embed", "pipeline"]
    assert data["naive"]["passages"] == passages and data["embed"]["records"] == passages
    assert data["embed"]["ceiling"]["passages"] == passages  # the ceiling beside it: on the same passages
    assert data["pipeline"]["passages"] == passages and data["pipeline"]["documents"] == 10
    assert 0 < data["pipeline"]["latency_p50_s"] <= data["pipeline"]["latency_p99_s"] < 60
    references = {r["label"]: r["reference_label"] for r in data["rows"]}
    assert references["embed stage alone, through the broker"] == "ceiling beside it"
    assert references["whole pipeline against the naive loop"] == "naive loop"
    assert "whole pipeline against the naive loop" in done.stdout


def _quick_part(kafka: str, tmp_path: Path, part: str, records: int) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m bench --quick --parts PART` on the session's broker: its output and results.json."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--parts", part, "--docs", "12", "--stage-records", str(records),
         "--bootstrap", kafka, "--port-shift", str(PORT_SHIFT), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "250"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads((tmp_path / "results.json").read_text())


@pytest.mark.kafka
def test_bench_light_stages_against_a_librdkafka_reference(kafka: str, tmp_path: Path) -> None:
    """Each light stage after a bare Faust agent and the bare librdkafka loop, on the same 300 records."""
    done, data = _quick_part(kafka, tmp_path, "stages", 300)
    stages = ("preprocess", "classify", "store")
    assert {s: (v["records"], v["bare"]["records"], v["reference"]["records"]) for s, v in data["stages"].items()
            } == {s: (300, 300, 300) for s in stages}
    assert all(v["reference"]["records_per_s"] > 0 and len(v["rounds"]["reference"]) == 1
               for v in data["stages"].values())
    assert {r["label"]: r["reference_label"] for r in data["rows"] if r["reference_label"]} == {
        **{f"{s} alone": "librdkafka reference beside it" for s in stages},
        **{f"{s} against the bare Faust agent": "bare Faust beside it" for s in stages}}
    references = [r for r in data["rows"] if r["label"].startswith("librdkafka reference on")]
    assert [r["figure"] for r in references] == [data["stages"][s]["reference"]["records_per_s"] for s in stages]
    assert "librdkafka reference beside it" in done.stdout


def test_bench_gateway_against_in_process_and_a_bare_responder(tmp_path: Path) -> None:
    """A small run of the gateway benchmark on its own nats-server: each figure is measured, none is made up."""
    from tests.conftest import NATS_TEST_PORT

    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--requests", "48", "--clients", "4",
         "--nats-port", str(NATS_TEST_PORT + 11), "--web-port", str(6910 + PORT_SHIFT)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    g = json.loads(done.stdout)
    assert g["max_batch"] == 32 and g["throughput_4_clients_per_s"] > 0 and g["in_process_one_at_a_time_per_s"] > 0
    assert g["batching_gain"] == pytest.approx(g["throughput_4_clients_per_s"] / g["in_process_one_at_a_time_per_s"],
                                               abs=0.02)  # each figure is rounded
    for figure in (g["encode_in_process_1"], g["round_trip_1_client"], g["bare_responder"]["round_trip_1_client"]):
        assert 0 < figure["p50_ms"] <= figure["p99_ms"]
    # A round trip holds a model pass, so it outlasts the gateway's own model time; the rest is NATS and code.
    assert g["model_in_gateway_mean_ms"] > 0 and g["beyond_model_1_client_mean_ms"] > 0


def test_bench_refuses_an_unknown_part() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--parts", "ceiling,gpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "unknown part(s) gpu" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_sim_rows_divide_the_stage_by_the_stand_in() -> None:
    results = {"meta": {"device": "cpu"},
               "sim": {"records": 9000, "seconds": 0.6, "records_per_s": 15000.0, "mean_batch": 500,
                       "stage_seconds": 0.5, "standin": {"passages_per_s": 20000.0, "passes": 40}}}
    rows = {r.label: r for r in all_rows(results)}
    stage = rows["embed stage with the simulated accelerator (SIMULATION)"]
    assert stage.reference == 20000.0 and stage.ratio == pytest.approx(0.75) and stage.met is False
    assert rows["simulated accelerator in process (no Kafka; SIMULATION)"].ratio is None


def test_the_stand_in_spends_its_calibrated_time_with_the_gil_released() -> None:
    import threading
    import time

    from stages.simulated import SimulatedAccelerator

    sim = SimulatedAccelerator(pass_s=0.2, token_s=0.0)
    batch = [[101, 7, 102], [101, 102]]
    count, done = [0], threading.Event()

    def spin() -> None:  # pure Python: it runs only while nobody holds the GIL
        while not done.is_set():
            count[0] += 1

    worker = threading.Thread(target=spin)
    worker.start()
    time.sleep(0.05)
    before, started = count[0], time.perf_counter()
    vectors = sim.encode_ids(batch)
    took, during = time.perf_counter() - started, count[0] - before
    done.set()
    worker.join()
    assert 0.19 < took < 1.0 and during > 1000, (took, during)
    assert vectors.shape == (2, 384) and abs(float((vectors ** 2).sum(axis=1)[0]) - 1) < 1e-5
    assert (sim.encode_ids(batch) == vectors).all()  # deterministic per text
    assert SimulatedAccelerator(pass_s=0.001, token_s=1e-6).seconds(batch) == pytest.approx(0.001 + 6e-6)


@pytest.mark.kafka
def test_bench_sim_part_runs_the_embed_stage_on_the_stand_in(kafka: str, tmp_path: Path) -> None:
    done, data = _quick_part(kafka, tmp_path, "sim", 2000)
    sim = data["sim"]
    assert sim["standin"]["passages"] == 2000 and sim["standin"]["passages_per_s"] > 0
    assert sim["prefilled"] and 0 < sim["records"] < 2000 and sim["records_per_s"] > 0
    assert sim["reference"]["records"] == 2000 and sim["reference"]["records_per_s"] > 0 and sim["tokenizer_per_s"] > 0
    labels = {r["label"]: r["reference_label"] for r in data["rows"]}
    skeleton = labels["embed stage with the simulated accelerator, against the skeleton"]
    assert skeleton == "librdkafka reference beside it"
    assert "SIMULATION" in done.stdout


def test_runtime_ab_refuses_unknown_stages_and_revisions() -> None:
    cases = ((["--stages", "classify,nope"], "choose from"), (["--before", "no-such-rev"], "cannot check out"))
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "bench.runtime_ab", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
        assert done.returncode != 0 and message in done.stdout + done.stderr, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr


def test_runtime_ab_table_divides_each_arm_by_the_reference_and_the_before(capsys: pytest.CaptureFixture) -> None:
    from bench import runtime_ab

    runtime_ab.show({"before": "abc1234", "records": 100, "rounds": 2, "stages": {"classify": {
        "before": [2000.0, 3000.0], "after, depth 1": [8000.0, 7000.0], "after": [9000.0, 8500.0],
        "reference": [10000.0, 9000.0]}}})
    out = capsys.readouterr().out
    assert "0.30×" in out and "3.00×" in out and "0.90×" in out  # 3000/10000, 9000/3000, 9000/10000
