"""Reprocessing on the full pipeline: replay classify with a new label set, and re-embed blue/green while live
traffic flows, then promote the new collection."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition

from pipeline.config import load_topology
from stages.model import model_path
from tests.conftest import ROOT, lag, run_cli, start_stage, stop_all, stored_points, wait_for

SAMPLE = ROOT / "stages" / "data" / "sample.jsonl"
NEW_LABELS = {"network-io": "sockets, HTTP, URLs, email, servers and clients",
              "everything-else": "text, numbers, files, formats, threads and everything that is not networking"}


def _produce(path: Path, topic: str, docs: list[dict], file: Path) -> None:
    file.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert run_cli("-c", str(path), "produce", "-t", topic, str(file)).returncode == 0


def test_replay_classify_and_blue_green_reembed(topology, tmp_path: Path) -> None:
    path, topo = topology
    # A second model, available offline: a copy of the bundled one under another name (so another model id).
    new_model = tmp_path / "minilm-copy"
    shutil.copytree(model_path("all-MiniLM-L6-v2"), new_model)
    raw = yaml.safe_load(path.read_text())
    classify_name = next(n for n in raw["stages"] if n == "classify")
    raw["stages"][classify_name]["options"]["models"] = [str(new_model)]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    docs = [json.loads(line) for line in SAMPLE.read_text().splitlines()][:24]
    source = topo.stages["preprocess"].input
    qdrant = topo.stages["store"].options["path"]

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    try:
        _produce(path, source, docs[:16], tmp_path / "a.jsonl")
        wait_for(lambda: lag(topo) == 0 and run_cli("-c", str(path), "collections", "list").returncode == 0
                 and "docs--all-MiniLM-L6-v2" in run_cli("-c", str(path), "collections", "list").stderr,
                 300, "the first full run", procs, logs)

        # 1. Replay classify to earliest with a new label set: same points, every one relabelled.
        procs["classify"].send_signal(signal.SIGTERM)
        procs["classify"].wait(60)
        raw["stages"]["classify"]["options"]["labels"] = NEW_LABELS
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        replayed = run_cli("-c", str(path), "replay", "classify", "--to-earliest", "--wait", "--execute")
        assert replayed.returncode == 0, replayed.stderr
        del procs["classify"]
        procs["classify-2"] = start_stage(path, "classify", logs, name="classify-2")
        wait_for(lambda: lag(topo) == 0, 300, "the classify replay", procs, logs)

        # 2. Re-embed with the new model in a second lane while live traffic keeps flowing.
        lane = ["--option", f"model={new_model}", "--group", "lane-minilm-copy", "--web-port", "17777"]
        procs["embed-new"] = start_stage(path, "embed", logs, *lane, name="embed-new")
        _produce(path, source, docs[16:], tmp_path / "b.jsonl")  # live traffic during the re-embed

        def lane_done() -> bool:
            """The new lane's own group has consumed every passage, and everything downstream is done."""
            probe = Consumer({"bootstrap.servers": topo.kafka.bootstrap, "group.id": "lane-minilm-copy"})
            passages = topo.stages["embed"].input
            parts = [TopicPartition(passages, p) for p in range(topo.topic(passages).partitions)]
            try:
                committed = [tp.offset for tp in probe.committed(parts, timeout=10)]
                ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
            finally:
                probe.close()
            return committed == ends and lag(topo) == 0

        wait_for(lane_done, 300, "the new lane to catch up", procs, logs)
        lane_offsets = run_cli("-c", str(path), "offsets", "embed", "--group", "lane-minilm-copy", "--json")
        assert lane_offsets.returncode == 0, lane_offsets.stderr
        rows = json.loads(lane_offsets.stdout)
        assert {r["group"] for r in rows} == {"lane-minilm-copy"} and all(r["lag"] == 0 for r in rows)

        # 3. Promote: search now answers from the new collection.
        promoted = run_cli("-c", str(path), "collections", "promote", "docs--minilm-copy")
        assert promoted.returncode == 0, promoted.stderr
        found = run_cli("-c", str(path), "search", " ".join(docs[3]["text"].split()), "-k", "1")
        assert found.returncode == 0 and docs[3]["doc_id"] in found.stderr
    finally:
        stop_all(procs)

    old = stored_points(qdrant, "docs--all-MiniLM-L6-v2")
    new = stored_points(qdrant, "docs--minilm-copy")
    via_alias = stored_points(qdrant, "docs")
    assert set(old) == set(new) == set(via_alias)  # same passages in both, nothing duplicated
    assert len({p["doc_id"] for p in old.values()}) == 24
    assert via_alias == new
    assert all(p["model_id"] == "minilm-copy" for p in new.values())
    assert all(p["model_id"] == "all-MiniLM-L6-v2" for p in old.values())
    # Points written after the replay carry the new label set (both collections).
    assert all(p["label"] in NEW_LABELS for p in new.values())
    first_run = [p for p in old.values() if p["doc_id"] in {d["doc_id"] for d in docs[:16]}]
    assert first_run and all(p["label"] in NEW_LABELS and p["classifier_id"].startswith("zero-shot:")
                             for p in first_run)
