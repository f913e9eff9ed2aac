"""Batch failure handling in the runtime: poison records are bisected out on the real path, and an out-of-memory
error halves the batch instead of skipping anything."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.config import load_topology
from pipeline.kafka.dlq import dead_letters
from pipeline.runtime.batch import BatchHandler, Raw
from pipeline.avro.codecs import codec_for
from pipeline.runtime.stage import Reject, Stage, TransientError
from stages.store import StoreStage, point_id
from tests.conftest import lag, run_cli, start_stage, stop_all, stored_points, wait_for


def test_poison_records_are_isolated_by_bisection(topology, tmp_path: Path) -> None:
    path, _ = topology
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["store"]["impl"] = "tests.flaky_store:PoisonStoreStage"
    raw["stages"]["store"]["batch"] = {"max_records": 256, "max_wait_ms": 2000}  # big batches, poison inside
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    ids = [f"poison-{i}" if i in (7, 23) else f"ok-{i}" for i in range(30)]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"doc_id": d, "text": f"Document {d}."}) + "\n" for d in ids))
    assert run_cli("-c", str(path), "produce", "-t", topo.stages["preprocess"].input, str(source)).returncode == 0
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    try:
        wait_for(lambda: lag(topo) == 0 and len(dead_letters(topo, "store")) == 2, 240,
                 "the poison to be isolated", procs, logs)
    finally:
        stop_all(procs)
    letters = dead_letters(topo, "store")
    decoded = [codec_for(topo, topo.stages["store"].input).decode(d.value)["doc_id"] for d in letters]
    assert sorted(decoded) == ["poison-23", "poison-7"]
    assert {d.reason for d in letters} == {"stage-error"}
    assert all("cannot store a poison document" in d.error["message"] for d in letters)
    assert set(stored_points(topo.stages["store"].options["path"])) == {point_id(d, 0) for d in ids if d.startswith("ok")}


class _OutOfMemoryBelow(Stage):
    """Fails like CUDA out of memory on batches larger than `fits`."""

    Options = StoreStage.Options  # it stands in for the store, with the store's options
    fits = 2
    calls: list[int] = []

    def process(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise TransientError(f"out of memory on a batch of {len(batch)}", shrink=True)
        return [Reject("seen", item.value["doc_id"]) for item in batch]


def test_out_of_memory_halves_the_batch_and_skips_nothing(topology) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    spec = topo.stages["store"].model_copy(update={"options": {}})  # the store's options are not this stage's
    stage = _OutOfMemoryBelow("store", spec, topo)
    handler = BatchHandler(stage, topo)
    handler.stopping.wait = lambda seconds: None  # no real back-off sleeps in the test
    codec = codec_for(topo, topo.stages["store"].input)
    base = {"passage_index": 0, "passage_count": 1, "text": "t", "content_hash": "h",
            "lineage": {"topic": "t", "partition": 0, "offset": 0, "ingest_time_ms": 0},
            "model_id": "m", "dim": 1, "vector": b"\0\0\0\0", "label": "a", "score": 1.0, "scores": {},
            "classifier_id": "c"}
    raws = [Raw(None, codec.encode({**base, "doc_id": f"d{i}"}), "t", 0, i, 0) for i in range(8)]
    handler.run_batch(raws)
    assert stage.calls[:3] == [8, 4, 2]  # halved until it fits
    assert handler.chunk == 2
    letters = dead_letters(topo, "store")  # every record was seen and reported, none skipped
    assert sorted(d.error["message"] for d in letters) == sorted(f"d{i}" for i in range(8))
