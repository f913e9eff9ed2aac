"""examples/keywords end to end on the real broker: five stage processes, and each stored passage carries its
keywords in Qdrant, where a filter on them finds exactly the passages that have them."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import yaml

from pipeline.config import Topology
from pipeline.dev import sandbox
from pipeline.runtime.stage import load_stage
from stages.store import point_id
from tests.conftest import PORT_SHIFT, ROOT, lag, run_cli, start_stage, stop_all, stored_points, wait_for

EXAMPLE = ROOT / "examples" / "keywords"


def _example_topology(folder: Path, bootstrap: str) -> tuple[Path, Topology]:
    raw = sandbox.isolated(yaml.safe_load((EXAMPLE / "topics.yaml").read_text()), f"t{uuid.uuid4().hex[:8]}.",
                           bootstrap, port_shift=PORT_SHIFT, partitions=1)
    raw["stages"]["store"]["options"]["path"] = str(folder / "qdrant")
    return sandbox.write(raw, folder, EXAMPLE / "schemas")


def test_example_schemas_are_the_repos_plus_one() -> None:
    ours = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.avsc")}
    theirs = {p.name: p.read_text() for p in (EXAMPLE / "schemas").glob("*.avsc")}
    assert set(theirs) - set(ours) == {"keywords_passage.v1.avsc"}
    assert {name: theirs[name] for name in ours} == ours  # copies, kept in step with the repo's


def test_keywords_stored_and_searchable(kafka: str, tmp_path: Path) -> None:
    path, topo = _example_topology(tmp_path, kafka)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    docs = [json.loads(line) for line in (ROOT / "stages" / "data" / "sample.jsonl").read_text().splitlines()]
    docs = [d for d in docs if len(d["text"]) < 800][:10]
    sample = tmp_path / "docs.jsonl"
    sample.write_text("".join(json.dumps(d) + "\n" for d in docs))

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    try:
        sent = run_cli("-c", str(path), "produce", "-t", topo.stages["preprocess"].input, str(sample))
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: lag(topo) == 0, 300, "every stage to catch up", procs, logs)
        # The example's topology works with the search command (embed and store are running).
        target = docs[0]
        found = run_cli("-c", str(path), "search", " ".join(target["text"].split()), "-k", "3", timeout=120)
        assert found.returncode == 0, found.stderr
        first_row = next(line for line in found.stderr.splitlines() if "│" in line and "py:" in line)
        assert f" {target['doc_id']} " in first_row
    finally:
        stop_all(procs)

    qdrant = topo.stages["store"].options["path"]
    points = stored_points(qdrant)
    assert {p["doc_id"] for p in points.values()} == {d["doc_id"] for d in docs}
    stage = load_stage(topo, "keywords")
    stage.setup()
    for pid, payload in points.items():
        assert pid == point_id(payload["doc_id"], payload["passage_index"])
        assert payload["keywords"] == stage.keywords(payload["text"]), payload["doc_id"]
        assert len(payload["keywords"]) == 5 and "vector" not in payload
        assert payload["label"]  # the classify stage's fields still arrive

    # Searchable: a vector query filtered on one keyword returns exactly the passages that have it (the
    # most common keyword that some passages lack).
    counts = Counter(k for p in points.values() for k in p["keywords"])
    keyword = sorted((k for k in counts if counts[k] < len(points)), key=lambda k: (-counts[k], k))[0]
    having = {pid for pid, p in points.items() if keyword in p["keywords"]}
    store = load_stage(topo, "store")
    store.setup()
    try:
        hits = store.search({"vector": [1.0] * 384, "k": 100, "where": {"keywords": keyword}})["hits"]
    finally:
        store.close()
    assert {h["id"] for h in hits} == having and len(having) < len(points)
