"""The vector-store interface on each backend: Qdrant Edge (embedded default), the server backend through
qdrant-client's in-memory mode (same client API), and a real Qdrant server when QDRANT_URL is set."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from stages.store import point_id
from stages.vectorstore import Point, open_store, parse_where, stored_points
from stages.vectorstore.edge import OPTIMIZING, REPLACED, EdgeStore

QDRANT_URL = os.environ.get("QDRANT_URL")
if not QDRANT_URL:
    print("\ntests/test_vectorstore.py: the real-server tests are skipped: set QDRANT_URL (and QDRANT_API_KEY) "
          "to run them against a Qdrant server")


def _backends() -> list:
    real = pytest.param("server", marks=pytest.mark.skipif(
        not QDRANT_URL, reason="no Qdrant server: set QDRANT_URL (and QDRANT_API_KEY) to run these against one"))
    return ["edge", "memory", real]


@pytest.fixture(params=_backends())
def store(request, tmp_path: Path):
    if request.param == "edge":
        opened = open_store(tmp_path / "qdrant", indexes={"metadata.lang": "keyword"})
    elif request.param == "memory":
        opened = open_store(tmp_path, url=":memory:", indexes={"metadata.lang": "keyword"})
    else:
        opened = open_store(tmp_path, url=QDRANT_URL, indexes={"metadata.lang": "keyword"})
    opened.prefix = f"t{uuid.uuid4().hex[:8]}"  # a real server is shared: unique names per test
    yield opened
    if request.param == "server":
        for name in opened.collections():
            if name.startswith(opened.prefix):
                opened.client.delete_collection(name)
    opened.close()


def _points(n: int, dim: int = 16, seed: int = 0, docs: int = 3) -> list[Point]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    per_doc = -(-n // docs)
    return [Point(point_id(f"d{i // per_doc}", i % per_doc), vectors[i].tolist(),
                  {"doc_id": f"d{i // per_doc}", "passage_index": i % per_doc, "passage_count": per_doc,
                   "label": "odd" if i % 2 else "even", "metadata": {"lang": "en" if i < n // 2 else "fr"}})
            for i in range(n)]


def test_upsert_search_filter_delete_alias(store) -> None:
    a, b = f"{store.prefix}--m1", f"{store.prefix}--m2"
    points = _points(30)
    store.upsert(a, 16, points)
    store.upsert(a, 16, points[:5])  # idempotent: the same ids again
    store.flush()
    assert store.count(a) == 30 and store.exists(a) and not store.exists(b)
    query = points[7].vector
    [best] = store.search(a, query, 1)
    assert best.id == points[7].id and best.payload["passage_index"] == points[7].payload["passage_index"]
    odd = store.search(a, query, 50, {"label": "odd"})
    assert {h.id for h in odd} == {p.id for p in points if p.payload["label"] == "odd"}
    nested = store.search(a, query, 50, {"metadata.lang": "fr", "label": "even"})
    assert {h.id for h in nested} == {p.id for p in points if p.payload["metadata"]["lang"] == "fr"
                                      and p.payload["label"] == "even"}
    exact = store.search(a, query, 5, exact=True)
    assert [h.id for h in exact] == [h.id for h in store.search(a, query, 5)]

    store.delete_docs(a, ["d1"])
    # d0 re-split into 4 passages, d2 into 8: their passages 4.. and 8.. go (and a doc never stored is no error)
    store.delete_stale(a, {"d0": 4, "d2": 8, "never-stored": 4})
    store.flush()
    left = dict(store.scroll(a))
    assert set(left) == {p.id for p in points if (p.payload["doc_id"] == "d2" and p.payload["passage_index"] < 8)
                         or (p.payload["doc_id"] == "d0" and p.payload["passage_index"] < 4)}
    store.delete_docs(f"{store.prefix}--none", ["d0"])  # no such collection: nothing to do

    alias = f"{store.prefix}"
    assert store.alias(alias) is None
    store.upsert(b, 16, points[:3])
    store.set_alias(alias, a)
    assert store.alias(alias) == a and store.count(alias) == len(left)
    store.set_alias(alias, b)
    assert store.alias(alias) == b and store.count(alias) == 3 and store.exists(alias)
    assert {a, b} <= set(store.collections())
    assert store.info(a)["points"] == len(left)


def test_edge_persists_and_reopens(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "q")
    points = _points(20)
    store.upsert("docs--m", 16, points)
    store.set_alias("docs", "docs--m")
    store.flush()
    store.close()
    assert set(stored_points(tmp_path / "q")) == {p.id for p in points}
    assert set(stored_points(tmp_path / "q", "docs--m")) == {p.id for p in points}
    assert stored_points(tmp_path / "q", "other") == {}
    # One owner per path: a second store on the same path is refused while the first holds it.
    first = EdgeStore(tmp_path / "q")
    with pytest.raises(RuntimeError, match="one owner"):
        EdgeStore(tmp_path / "q")
    first.close()


def test_edge_optimize_builds_hnsw_and_keeps_every_point(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "q")
    # Over the engine's indexing threshold (10 MB of vectors); below it a segment stays plain (exact) on purpose.
    points = _points(8_000, dim=384, docs=400)
    for i in range(0, len(points), 2000):
        store.upsert("c", 384, points[i:i + 2000])
    store.flush()
    query = points[123].vector
    before = [h.id for h in store.search("c", query, 10, {"label": "odd"})]
    assert store.info("c")["indexed"] == 0  # not optimized yet: exact search
    assert store.optimize("c") is True
    assert store.info("c")["indexed"] == len(points) and store.count("c") == len(points)
    after = [h.id for h in store.search("c", query, 10, {"label": "odd"})]
    assert len(set(before) & set(after)) >= 9  # HNSW: near-exact
    assert [h.id for h in store.search("c", query, 10, exact=True)][0] == points[123].id
    assert store.optimize("c") is False  # nothing left to do
    assert not list((tmp_path / "q").glob(f"*{OPTIMIZING}")) and not list((tmp_path / "q").glob(f"*{REPLACED}"))
    store.upsert("c", 384, [Point(str(uuid.uuid4()), _points(1, dim=384, seed=9)[0].vector, {})])
    store.close()
    assert len(stored_points(tmp_path / "q", "c")) == len(points) + 1


def test_edge_recovers_from_a_crash_during_optimize(tmp_path: Path) -> None:
    root = tmp_path / "q"
    store = EdgeStore(root)
    store.upsert("c", 16, _points(10))
    store.flush()
    store.close()
    (root / "c").rename(root / f"c{REPLACED}")  # died between the two renames of the swap
    (root / f"x{OPTIMIZING}").mkdir()  # and a half-optimized copy is left over
    assert len(stored_points(root, "c")) == 10
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["c"]


def test_parse_where() -> None:
    assert parse_where(["label=maths", "passage_index=0", "metadata.lang=en", "x=true"]) == \
        {"label": "maths", "passage_index": 0, "metadata.lang": "en", "x": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_where(["label"])
