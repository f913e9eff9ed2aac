"""Durability at the ack barrier: the store flushes Qdrant Edge before the runtime acks a batch, so a store killed
(SIGKILL) right after its group committed the offsets finds every acknowledged point when it restarts."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np

from pipeline.avro.codecs import codec_for
from pipeline.kafka.offsets import stage_lag
from pipeline.kafka.sender import Sender
from stages.model import to_bytes
from stages.store import point_id
from tests.conftest import run_cli, start_stage, stored_points, wait_for


def _records(start: int, n: int) -> list[dict]:
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        v = rng.normal(size=384).astype(np.float32)
        v /= np.linalg.norm(v)
        out.append({"doc_id": f"doc{i}", "passage_index": 0, "passage_count": 1, "text": f"text {i}",
                    "content_hash": "h", "title": None, "source": None, "metadata": {},
                    "lineage": {"topic": "raw", "partition": 0, "offset": i, "ingest_time_ms": int(time.time() * 1000)},
                    "model_id": "all-MiniLM-L6-v2", "dim": 384, "vector": to_bytes(v), "label": "files",
                    "score": 1.0, "scores": {"files": 1.0}, "classifier_id": "c"})
    return out


def test_every_acked_point_survives_sigkill(topology, tmp_path: Path) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    topic = topo.stages["store"].input
    codec = codec_for(topo, topic)
    logs = tmp_path / "logs"
    logs.mkdir()
    acked: set[str] = set()
    for round_ in range(2):  # killed twice: the second run restarts on the first run's shard files
        batch = _records(round_ * 600, 600)
        sender = Sender(topo)
        for record in batch:
            sender.send(topic, codec.encode(record), record["doc_id"].encode())
        assert sender.flush(30).ok
        store = start_stage(path, "store", logs, name=f"store-{round_}")
        committed = lambda: sum(r.committed or 0 for r in stage_lag(topo, "store"))  # noqa: E731
        wait_for(lambda: committed() >= 600 * (round_ + 1), 180, "the store to commit every record",
                 {f"store-{round_}": store}, logs)
        store.send_signal(signal.SIGKILL)  # right after the ack: no shutdown, no close, no final flush
        store.wait()
        acked |= {point_id(r["doc_id"], 0) for r in batch}
        assert set(stored_points(topo.stages["store"].options["path"])) == acked
