"""Commands and the demo find the embedding, classify and store stages by their class, not by their name:
renamed stages in topics.yaml leave `search`, `collections list` and the demo's lookups working."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import load_topology
from pipeline.testing import run_stage
from stages.cli import commands
from stages.cli.commands import classify_stage, embed_query, embed_stage, store_stage
from stages.cli.demo import ingest_topic
from stages.model import encode, load_model, to_bytes
from tests.conftest import run_cli, write_topology

RENAMED = {"preprocess": "clean", "embed": "vectorise", "classify": "label", "store": "qdrant-sink"}
TEXTS = {"net": "Open a TCP socket to an HTTP server and read the response.",
         "maths": "Compute the square root and the mean of a list of numbers."}


def _renamed(tmp_path: Path, kafka: str) -> Path:
    path, _ = write_topology(tmp_path, kafka, partitions=1)
    raw = yaml.safe_load(path.read_text())
    raw["stages"] = {RENAMED[name]: spec for name, spec in raw["stages"].items()}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.kafka
def test_renamed_stages_keep_search_collections_and_demo_working(tmp_path: Path, kafka: str, stage_on_broker,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = _renamed(tmp_path, kafka)
    topology = load_topology(path)
    assert "store" not in topology.stages and "embed" not in topology.stages
    # The demo's lookups
    assert (embed_stage(topology), classify_stage(topology), store_stage(topology)) == ("vectorise", "label",
                                                                                       "qdrant-sink")
    assert ingest_topic(topology) == topology.stages["clean"].input

    vectors = encode(load_model("all-MiniLM-L6-v2"), list(TEXTS.values()))
    records = [{"doc_id": doc_id, "passage_index": 0, "passage_count": 1, "text": text, "content_hash": doc_id,
                "title": None, "source": None, "metadata": {"label": doc_id},
                "lineage": {"topic": "t", "partition": 0, "offset": 0, "ingest_time_ms": 0},
                "model_id": "all-MiniLM-L6-v2", "dim": 384, "vector": to_bytes(v), "label": doc_id, "score": 1.0,
                "scores": {doc_id: 1.0}, "classifier_id": "test"} for (doc_id, text), v in zip(TEXTS.items(), vectors)]
    assert run_stage("qdrant-sink", records, path).dead_letters == []

    # Neither stage runs: search embeds the query with the embedding stage's model and opens the store's Qdrant.
    found = run_cli("-c", str(path), "search", "connect to a web server over the network", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "net" in found.stderr and "maths" not in found.stderr.replace("search:", "")
    listed = run_cli("-c", str(path), "collections", "list")
    assert listed.returncode == 0, listed.stderr
    assert "docs--all-MiniLM-L6-v2" in listed.stderr and "│ 2 " in listed.stderr

    # The renamed embedding stage running on the broker answers the query embedding on its own web port.
    stage_on_broker("vectorise", path)

    def no_local_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded locally although the embedding stage runs")

    monkeypatch.setattr(commands, "load_model", no_local_model)
    query = embed_query(topology, ["connect to a web server over the network"])
    assert query.shape == (1, 384) and float(query[0] @ vectors[0]) > float(query[0] @ vectors[1])
    assert np.allclose(query[0], encode(load_model("all-MiniLM-L6-v2"), ["connect to a web server over the network"])[0],
                       atol=1e-3)
