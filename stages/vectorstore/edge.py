"""Qdrant Edge, Qdrant's engine in-process: one shard directory per collection under the store's path, aliases
in a small JSON file replaced atomically. One process owns a path (each shard's WAL is locked)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.vectorstore.base import BUILTIN_INDEXES, Hit, IndexType, Point, VectorStore, by_count, filtered_ef

log = logging.getLogger("stages.vectorstore")
ALIASES = "aliases.json"
OPTIMIZING = ".optimizing"  # a shard copy being optimized by a child process
REPLACED = ".replaced"  # the unoptimized shard while the optimized copy takes its place

# The child that builds the HNSW graph: qdrant-edge's optimize() holds the GIL for its whole run (a minute at
# 100,000 points), which would freeze the stage's event loop (Kafka heartbeats, /ready, search). It dies with us.
_OPTIMIZE_CHILD = """
import ctypes, signal, sys
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except OSError:
    pass
from qdrant_edge import EdgeShard
shard = EdgeShard.load(sys.argv[1])
shard.optimize()
shard.close()
"""


def _edge() -> Any:
    import qdrant_edge

    return qdrant_edge


def _condition(key: str, value: Any) -> Any:
    e = _edge()
    return e.FieldCondition(key=key, match=e.MatchValue(value))


def _filter(where: dict[str, Any] | None) -> Any:
    if not where:
        return None
    return _edge().Filter(must=[_condition(k, v) for k, v in where.items()])


def _filtered_params(where: dict[str, Any] | None, k: int) -> Any:
    """ACORN for filtered searches: the HNSW graph alone loses neighbours behind a selective filter (recall@10
    0.79 with a 1-in-6 label filter at 100,000 points; 0.97 with ACORN at ef 32, p50 2.9 ms; bench/RESULTS.md)."""
    e = _edge()
    return e.SearchParams(hnsw_ef=filtered_ef(k), acorn=e.AcornSearchParams(enable=True)) if where else None


class EdgeStore(VectorStore):
    def __init__(self, path: str | Path, indexes: dict[str, IndexType] | None = None) -> None:
        self.root = Path(path)
        if (self.root / "meta.json").exists() and (self.root / "collection").is_dir():
            raise RuntimeError(f"{self.root} holds qdrant-client local-mode data, which the store no longer reads: "
                               "move that folder away and rebuild it with `pipeline replay STORE_STAGE --to-earliest "
                               "--execute` (the store's input topic still holds the vectors within its retention)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.indexes = {**BUILTIN_INDEXES, **(indexes or {})}
        self._shards: dict[str, Any] = {}
        self._dirty: set[str] = set()
        # Writes and optimize exclude each other (an optimize copies a shard); reads wait only while a shard is
        # swapped for its optimized copy. The GIL serialises the calls into the engine itself.
        self._write = threading.RLock()
        self._read = threading.RLock()
        self._recover()
        for name in self.collections():  # open every shard now: restart cost is paid before /ready
            self._shard(name)

    def _recover(self) -> None:
        """Finish or undo an optimize that a crash interrupted."""
        for leftover in self.root.glob(f"*{OPTIMIZING}"):
            shutil.rmtree(leftover, ignore_errors=True)
        for replaced in self.root.glob(f"*{REPLACED}"):
            live = replaced.with_name(replaced.name[: -len(REPLACED)])
            if live.exists():
                shutil.rmtree(replaced, ignore_errors=True)
            else:
                replaced.rename(live)

    # --- shards ---------------------------------------------------------------------------------------------

    def _dir(self, collection: str) -> Path:
        return self.root / collection

    def _shard(self, collection: str) -> Any:
        shard = self._shards.get(collection)
        if shard is None:
            folder = self._dir(collection)
            if not folder.is_dir():
                raise KeyError(collection)
            try:
                shard = self._shards[collection] = _edge().EdgeShard.load(str(folder))
            except Exception as exc:
                raise RuntimeError(f"cannot open the Qdrant Edge shard {folder}: {exc} (is another process "
                                   "using this store path? a store path has one owner: the store stage)") from None
        return shard

    def _create(self, collection: str, dim: int) -> Any:
        e = _edge()
        folder = self._dir(collection)
        shard = e.EdgeShard.create(str(folder), e.EdgeConfig(
            vectors=e.EdgeVectorParams(size=dim, distance=e.Distance.Cosine)))
        kinds = {"keyword": e.PayloadSchemaType.Keyword, "integer": e.PayloadSchemaType.Integer,
                 "float": e.PayloadSchemaType.Float, "bool": e.PayloadSchemaType.Bool}
        for field, kind in self.indexes.items():
            shard.update(e.UpdateOperation.create_field_index(field, kinds[kind]))
        shard.flush()
        self._shards[collection] = shard
        return shard

    def _resolve(self, name: str) -> str:
        return self.alias(name) or name

    # --- writes ---------------------------------------------------------------------------------------------

    def upsert(self, collection: str, dim: int, points: list[Point]) -> None:
        e = _edge()
        with self._write:
            try:
                shard = self._shard(collection)
            except KeyError:
                shard = self._create(collection, dim)
            shard.update(e.UpdateOperation.upsert_points([e.Point(p.id, p.vector, p.payload) for p in points]))
            self._dirty.add(collection)

    def delete_docs(self, collection: str, doc_ids: list[str]) -> None:
        e = _edge()
        with self._write:
            try:
                shard = self._shard(collection)
            except KeyError:
                return
            shard.update(e.UpdateOperation.delete_points_by_filter(
                e.Filter(must=[e.FieldCondition(key="doc_id", match=e.MatchAny(list(doc_ids)))])))
            self._dirty.add(collection)

    def delete_stale(self, collection: str, counts: dict[str, int]) -> None:
        e = _edge()
        if not counts:
            return
        stale = e.Filter(should=[
            e.Filter(must=[e.FieldCondition(key="doc_id", match=e.MatchAny(docs)),
                           e.FieldCondition(key="passage_index", range=e.RangeFloat(gte=n))])
            for n, docs in by_count(counts).items()])
        with self._write:
            self._shard(collection).update(e.UpdateOperation.delete_points_by_filter(stale))
            self._dirty.add(collection)

    def flush(self) -> None:
        with self._write:
            for name in list(self._dirty):
                self._shards[name].flush()
            self._dirty.clear()

    # --- reads ----------------------------------------------------------------------------------------------

    def search(self, name: str, vector: list[float], k: int, where: dict[str, Any] | None = None,
               exact: bool = False) -> list[Hit]:
        e = _edge()
        with self._read:
            found = self._shard(self._resolve(name)).query(e.QueryRequest(
                limit=k, query=e.Query.Nearest(vector), filter=_filter(where), with_payload=True,
                params=e.SearchParams(exact=True) if exact else _filtered_params(where, k)))
        return [Hit(str(p.id), p.score, p.payload) for p in found]

    def count(self, name: str) -> int:
        with self._read:
            return self._shard(self._resolve(name)).count(_edge().CountRequest(exact=True))

    def scroll(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        e = _edge()
        offset = None
        while True:
            with self._read:
                records, offset = self._shard(self._resolve(name)).scroll(
                    e.ScrollRequest(offset=offset, limit=1000, with_payload=True))
            for r in records:
                yield str(r.id), r.payload
            if offset is None:
                return

    def exists(self, name: str) -> bool:
        return self._dir(self._resolve(name)).is_dir()

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "edge_config.json").exists()
                      and not p.name.startswith(".") and not p.name.endswith((OPTIMIZING, REPLACED)))

    def info(self, name: str) -> dict[str, Any]:
        with self._read:
            found = self._shard(self._resolve(name)).info()
        return {"points": found.points_count, "indexed": found.indexed_vectors_count,
                "segments": found.segments_count}

    # --- aliases --------------------------------------------------------------------------------------------

    def _aliases(self) -> dict[str, str]:
        try:
            return json.loads((self.root / ALIASES).read_text())
        except FileNotFoundError:
            return {}

    def alias(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def set_alias(self, alias: str, collection: str) -> None:
        """Write the new aliases to a temporary file, fsync it, then rename it over the old one (atomic)."""
        aliases = {**self._aliases(), alias: collection}
        tmp = self.root / f".{ALIASES}.tmp"
        with open(tmp, "w") as out:
            json.dump(aliases, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / ALIASES)

    # --- optimize -------------------------------------------------------------------------------------------

    def optimize(self, name: str) -> bool:
        """Build the HNSW graph on a copy of the shard in a child process while searches go on against the
        shard (writes wait), then swap the copy in. Below the engine's indexing threshold nothing changes."""
        collection = self._resolve(name)
        with self._write:
            shard = self._shard(collection)
            shard.flush()
            before = shard.info()
            live = self._dir(collection)
            copy = live.with_name(live.name + OPTIMIZING)
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(live, copy)
            done = subprocess.run([sys.executable, "-c", _OPTIMIZE_CHILD, str(copy)], capture_output=True, text=True)
            if done.returncode != 0:
                shutil.rmtree(copy, ignore_errors=True)
                raise RuntimeError(f"optimizing {collection} failed: {done.stderr[-2000:]}")
            optimized = _edge().EdgeShard.load(str(copy))
            after = optimized.info()
            optimized.close()
            if (after.indexed_vectors_count, after.segments_count) == (before.indexed_vectors_count,
                                                                       before.segments_count):
                shutil.rmtree(copy, ignore_errors=True)
                return False
            with self._read:  # searches wait for the swap only (a shard reopen: well under a second)
                self._shards.pop(collection).close()
                replaced = live.with_name(live.name + REPLACED)
                live.rename(replaced)
                copy.rename(live)
                self._shard(collection)
                shutil.rmtree(replaced, ignore_errors=True)
            return True

    def close(self) -> None:
        with self._write, self._read:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
