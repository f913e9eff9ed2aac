"""Deletes flow through the pipeline: a tombstone keyed by doc id on the ingest topic (`pipeline delete`) becomes
a delete marker that embed and classify pass on without model work and the store turns into the removal of
every passage of the document. A re-ingest brings the document back; a replay of the log ends the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pipeline.testing import Tombstone, run_stage
from tests.conftest import ROOT, lag, run_cli, start_stage, stop_all, stored_points, wait_for

CONFIG = ROOT / "topics.yaml"


def test_a_tombstone_becomes_a_delete_marker_that_passes_every_stage() -> None:
    run = run_stage("preprocess", [Tombstone("gone"), {"doc_id": "kept", "text": "One sentence. Another."},
                                   Tombstone(None)], CONFIG)
    marker, kept = run.outputs
    assert marker["deleted"] is True and marker["doc_id"] == "gone" and marker["passage_count"] == 0
    assert kept["deleted"] is False and kept["doc_id"] == "kept"
    assert run.reasons == ["tombstone-without-key"]
    assert run.output_keys[0] == b"gone"

    assert marker["token_ids"] is None and marker["tokenizer_id"] is None  # nothing to embed, no ids carried
    embedded = run_stage("embed", [marker], CONFIG).outputs
    passage = {k: v for k, v in marker.items() if k not in ("token_ids", "tokenizer_id")}  # Passage-only fields
    assert embedded == [{**passage, "model_id": "all-MiniLM-L6-v2", "dim": 0, "vector": b""}]
    classified = run_stage("classify", embedded, CONFIG).outputs
    assert classified == [{**embedded[0], "label": "", "score": 0.0, "scores": {}, "classifier_id": ""}]


def test_tombstones_are_dead_lettered_by_stages_that_do_not_accept_them() -> None:
    assert run_stage("embed", [Tombstone("x")], CONFIG, setup=False).reasons == ["empty-value"]


def test_delete_end_to_end_then_reingest_then_replay(topology, tmp_path: Path) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    raw_topic = topo.stages["preprocess"].input
    docs = {d: {"doc_id": d, "text": f"Document {d} talks about sockets. It has a second sentence about {d}."}
            for d in ("a", "b", "c", "d")}
    store_path = topo.stages["store"].options["path"]

    def produce(ids: list[str], name: str) -> None:
        (tmp_path / name).write_text("".join(json.dumps(docs[d]) + "\n" for d in ids))
        assert run_cli("-c", str(path), "produce", "-t", raw_topic, str(tmp_path / name)).returncode == 0

    def delete(*ids: str) -> None:
        done = run_cli("-c", str(path), "delete", *ids)
        assert done.returncode == 0, done.stderr

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    try:
        produce(["a", "b", "c", "d"], "first.jsonl")
        wait_for(lambda: lag(topo) == 0 and lag(topo, ["store"]) == 0, 300, "the first documents", procs, logs)
        delete("b", "c")
        produce(["b"], "again.jsonl")  # b comes back after its delete; c stays deleted
        wait_for(lambda: lag(topo) == 0, 300, "the deletes and the re-ingest", procs, logs)
    finally:
        stop_all(procs)
    assert {p["doc_id"] for p in stored_points(store_path).values()} == {"a", "b", "d"}

    # Replay the whole ingest log into an empty store: the document deleted in the log ends absent.
    shutil.rmtree(store_path)
    assert run_cli("-c", str(path), "replay", "preprocess", "--to-earliest", "--execute").returncode == 0
    procs = {name: start_stage(path, name, logs, name=f"{name}-replay") for name in topo.stages}
    try:
        wait_for(lambda: lag(topo) == 0 and len(list(Path(store_path).glob("docs--*"))) > 0, 300,
                 "the replay", {f"{n}-replay": p for n, p in procs.items()}, logs)
    finally:
        stop_all(procs)
    points = stored_points(store_path)
    assert {p["doc_id"] for p in points.values()} == {"a", "b", "d"}
    assert all(np.isfinite(p["score"]) for p in points.values())
    assert (logs / "store.log").read_text().count("Traceback") == 0


def test_delete_command_refuses_what_it_cannot_do(topology) -> None:
    path, _ = topology
    refused = run_cli("-c", str(path), "delete", "x", "--topic", "nope")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
