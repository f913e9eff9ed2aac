"""The search part of the benchmark: Qdrant Edge latency at 100,000 passages before and after the HNSW build,
recall@10 of the HNSW index against exact search on real embeddings, the store stage alone, and a restart."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench import measure
from bench.context import Context
from bench.harness import Bench
from bench.rows import Row, part
from stages.model import encode, load_model, model_id, to_bytes
from stages.store import point_id
from stages.vectorstore import Point, collection_for
from stages.vectorstore.edge import EdgeStore

LABELS = ["networking", "text", "data-formats", "concurrency", "maths", "files"]
SPREAD = 2.0  # noise norm around a real embedding: cosine ~0.45 to it, so neighbourhoods overlap as in a corpus


def _unit(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _around(rng: np.random.Generator, real: np.ndarray, n: int) -> np.ndarray:
    """`n` unit vectors scattered around randomly chosen real embeddings. Uniform random vectors have no
    neighbourhoods (every point is about as far as any other), which tells nothing about an index on text."""
    seeds = real[rng.integers(0, len(real), n)]
    v = seeds + rng.normal(size=seeds.shape).astype(np.float32) * (SPREAD / np.sqrt(real.shape[1]))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fill(store: EdgeStore, collection: str, vectors: np.ndarray, prefix: str, labels: list[str] | None = None) -> None:
    for start in range(0, len(vectors), 1000):
        chunk = vectors[start:start + 1000]
        store.upsert(collection, vectors.shape[1], [
            Point(point_id(f"{prefix}{start + i}", 0), v.tolist(),
                  {"doc_id": f"{prefix}{start + i}", "passage_index": 0,
                   "label": labels[start + i] if labels else LABELS[(start + i) % len(LABELS)]})
            for i, v in enumerate(chunk)])
    store.flush()


def _latency(store: EdgeStore, collection: str, queries: np.ndarray, label: str | None) -> dict[str, float]:
    where = {"label": label} if label else None
    store.search(collection, queries[0].tolist(), 10, where)  # warm
    took = []
    for q in queries:
        started = time.perf_counter()
        store.search(collection, q.tolist(), 10, where)
        took.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(took, 50)), "p99_ms": float(np.percentile(took, 99))}


def _recall(store: EdgeStore, collection: str, queries: np.ndarray, label: str | None = None) -> float:
    where = {"label": label} if label else None
    found = []
    for q in queries:
        approx = {h.id for h in store.search(collection, q.tolist(), 10, where)}
        exact = {h.id for h in store.search(collection, q.tolist(), 10, where, exact=True)}
        found.append(len(approx & exact) / max(1, len(exact)))
    return float(np.mean(found))


def run(bench: Bench, passages: list[dict[str, Any]], model: str, device: str, points: int = 100_000,
        queries: int = 300, stage_records: int = 20_000) -> dict[str, Any]:
    """Figures of the search part. The stored points are synthetic: scattered around real embeddings of the
    sample's passages, with random labels; queries are drawn the same way (new points, not stored ones)."""
    rng = np.random.default_rng(3)
    results: dict[str, Any] = {"points": points, "vectors": "synthetic, scattered around the sample's real "
                               f"embeddings (noise {SPREAD}, cosine ~0.45 to their seed), random labels"}
    path, topology = bench.topology("search", partitions=1)
    root = Path(topology.resolve_path(topology.stages["store"].options["path"]))
    collection = collection_for("docs", model_id(model))
    store = EdgeStore(root)
    real = encode(load_model(model, device), [p["text"] for p in passages])
    started = time.perf_counter()
    _fill(store, collection, _around(rng, real, points), "synthetic-",
          [LABELS[i] for i in rng.integers(0, len(LABELS), points)])
    store.set_alias("docs", collection)
    results["fill_points_per_s"] = points / (time.perf_counter() - started)
    probe = _around(rng, real, queries)
    results["before_optimize"] = {"no_filter": _latency(store, collection, probe, None),
                                  "label_filter": _latency(store, collection, probe, "maths")}
    started = time.perf_counter()
    store.optimize(collection)
    results["optimize_seconds"] = time.perf_counter() - started
    results["after_optimize"] = {"no_filter": _latency(store, collection, probe, None),
                                 "label_filter": _latency(store, collection, probe, "maths")}
    results["recall_at_10"] = {"no_filter": _recall(store, collection, probe),
                               "label_filter": _recall(store, collection, probe, "maths"),
                               "queries": len(probe), "real_passages": len(real)}
    results["indexed"] = store.info(collection)["indexed"]
    store.close()

    # The store stage restarting on those points: process start to /ready (its Kafka group joined).
    started = time.time()
    bench.start(path, "store", name="store-restart")
    try:
        results["restart_to_ready_s"] = bench.wait_ready(topology, ["store"]) - started
    finally:
        bench.stop()
    started = time.perf_counter()
    EdgeStore(root).close()
    results["reopen_store_s"] = time.perf_counter() - started

    # The store stage alone on Qdrant Edge (synthetic vectors, real stage, real broker).
    vectors = _unit(rng, stage_records)
    lineage = {"topic": "raw", "partition": 0, "offset": 0, "ingest_time_ms": int(time.time() * 1000)}
    records = [{"doc_id": f"s{uuid.uuid4().hex[:12]}", "passage_index": 0, "passage_count": 1, "text": "t",
                "content_hash": "h", "title": None, "source": None, "metadata": {}, "lineage": lineage,
                "model_id": model_id(model), "dim": 384, "vector": to_bytes(v), "label": LABELS[i % 6],
                "score": 1.0, "scores": {"maths": 1.0}, "classifier_id": "c", "deleted": False}
               for i, v in enumerate(vectors)]
    results["store_stage"] = measure.stage_alone(bench, "store", records)
    return results


def lines(found: dict[str, Any]) -> list[str]:
    """The figures as short lines for the console."""
    b, a, r = found["before_optimize"], found["after_optimize"], found["recall_at_10"]
    return [
        f"search at {found['points']:,} points ({found['vectors']}):",
        f"  before optimize: p50/p99 {b['no_filter']['p50_ms']:.1f}/{b['no_filter']['p99_ms']:.1f} ms, "
        f"label filter {b['label_filter']['p50_ms']:.1f}/{b['label_filter']['p99_ms']:.1f} ms (exact)",
        f"  optimize (HNSW build): {found['optimize_seconds']:.1f} s, {found['indexed']:,} vectors indexed",
        f"  after optimize: p50/p99 {a['no_filter']['p50_ms']:.1f}/{a['no_filter']['p99_ms']:.1f} ms, "
        f"label filter {a['label_filter']['p50_ms']:.1f}/{a['label_filter']['p99_ms']:.1f} ms",
        f"  recall@10 vs exact on {r['queries']} queries: {r['no_filter']:.3f}, "
        f"label filter {r['label_filter']:.3f}",
        f"  store restart to /ready: {found['restart_to_ready_s']:.2f} s (Edge reopen alone "
        f"{found['reopen_store_s']:.2f} s)",
        f"  store stage alone: {found['store_stage']['records_per_s']:,.0f} events/s "
        f"({found['store_stage']['records']:,} records)",
    ]


def _rows(results: dict[str, Any]) -> list[Row]:
    s = results["search"]
    before, after, recall = s["before_optimize"], s["after_optimize"], s["recall_at_10"]
    at = f"{s['points']:,} points, synthetic"
    return [
        Row("search", "top-10 with a label filter, p50, after optimize", after["label_filter"]["p50_ms"], "ms",
            "limit 5 ms", 5.0, 1.0, at_most=True, note=at),
        Row("search", "top-10 with a label filter, p99, after optimize", after["label_filter"]["p99_ms"], "ms",
            "limit 20 ms", 20.0, 1.0, at_most=True, note=at),
        Row("search", "top-10 with a label filter, p99, before optimize (exact)", before["label_filter"]["p99_ms"],
            "ms", "limit 20 ms", 20.0, 1.0, at_most=True, note=at),
        Row("search", "recall@10, no filter, after optimize", recall["no_filter"], "", "exact search", 1.0, 0.95,
            note=f"{recall['queries']} queries"),
        Row("search", "recall@10, label filter, after optimize", recall["label_filter"], "", "exact search", 1.0,
            0.95, note=f"{recall['queries']} queries"),
        Row("search", "store restart to /ready", s["restart_to_ready_s"], "s", "limit 2 s", 2.0, 1.0, at_most=True,
            note=f"Edge reopen alone {s['reopen_store_s']:.2f} s"),
        Row("search", "store stage alone on Qdrant Edge", s["store_stage"]["records_per_s"], "events/s",
            "target 5,000/s", 5000.0, 1.0),
    ]


@part("search", "Qdrant Edge: top-10 latency with and without a label filter before and after optimize, recall@10 "
      "against exact search, store restart and the store stage alone.", rows=_rows)
def run_search(ctx: Context) -> dict[str, Any]:
    found = run(ctx.bench, ctx.passages, ctx.model, ctx.device, 10_000 if ctx.quick else 100_000,
                stage_records=ctx.stage_records)
    ctx.console.print("\n".join(lines(found)), highlight=False)
    return found
