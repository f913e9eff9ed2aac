"""Store: upsert labelled vectors under deterministic ids, delete documents, and serve search on the web port."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pipeline
from pipeline import Incoming, Result, Route, Stage, TransientError
from pipeline.errors import ConfigError
from stages.classifier import quality as classifier_quality
from stages.model import from_bytes
from stages.vectorstore import Point, VectorStore, collection_for, open_store
from stages.vectorstore.base import IndexType

log = logging.getLogger("stages.store")
# Point ids are UUIDv5 of "doc_id#passage_index": a replay or a restart rewrites the same points.
POINT_NAMESPACE = uuid.UUID("6f1c0b5e-8a47-4f3e-9a55-1f1f0c2d7e11")

__all__ = ["StoreOptions", "StoreStage", "collection_for", "point_id"]


class StoreOptions(pipeline.Options):
    path: str = "var/qdrant"  # embedded Qdrant Edge (a shard folder per collection), relative to topics.yaml
    url: str | None = None  # a Qdrant server instead (API key from the env var api_key_env); ":memory:" in tests
    api_key_env: str = "QDRANT_API_KEY"
    collection: str = "docs"  # the alias search uses; each model's vectors get their own collection behind it
    # Input fields left out of a point's payload; every other field is kept, so new fields flow through.
    payload_exclude: list[str] = ["vector"]
    # Payload indexes beyond label, doc_id and passage_index, for fields search filters on: {metadata.lang: keyword}
    indexes: dict[str, IndexType] = {}
    # Build the HNSW graph once no batch came for this many seconds (null: never on a timer)...
    optimize_idle_s: float | None = 30.0
    # ... and when a run that wrote at least this many points closes (the end of a backfill).
    optimize_after_points: int = 10_000


def point_id(doc_id: str, passage_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}#{passage_index}"))


def _transient(exc: Exception) -> bool:
    from stages.vectorstore.server import is_transient

    return is_transient(exc)


class StoreStage(Stage):
    Options = StoreOptions
    options: StoreOptions
    accepts_tombstones = False  # deletes arrive as records with deleted=true (preprocess turns tombstones into them)

    def setup(self) -> None:
        self.alias = self.options.collection
        self.exclude = set(self.options.payload_exclude) | {"deleted"}
        try:
            self.store: VectorStore = open_store(self.topology.resolve_path(self.options.path), self.options.url,
                                                 self.options.api_key_env, self.options.indexes)
        except RuntimeError as exc:  # Edge: another process holds the folder
            raise ConfigError(f"cannot open the vector store: {exc}") from None
        self._last_write = time.monotonic()
        self._written = 0  # points written since the last optimize
        self._optimizing = False
        self._optimize_lock = threading.Lock()
        self._background: list[threading.Thread] = []
        self._stop = threading.Event()
        self._idle: threading.Thread | None = None
        if self.options.optimize_idle_s is not None:
            self._idle = threading.Thread(target=self._optimize_when_idle, name="store-optimize", daemon=True)
            self._idle.start()

    # --- writes ---------------------------------------------------------------------------------------------

    def process(self, batch: list[Incoming]) -> list[Result]:
        try:
            # In order, a run of records of one kind (upserts or deletes) and one model at a time: a document
            # deleted and re-ingested within one batch ends up present.
            run: list[Incoming] = []
            for item in batch:
                if run and (_kind(item) != _kind(run[0])):
                    self._apply(run)
                    run = []
                run.append(item)
            if run:
                self._apply(run)
            self.store.flush()  # durable before the runtime acks the batch
        except Exception as exc:
            if _transient(exc):
                raise TransientError(f"Qdrant unavailable: {exc}") from exc
            raise
        self._last_write = time.monotonic()
        return [[] for _ in batch]

    def _apply(self, items: list[Incoming]) -> None:
        model = items[0].value["model_id"]
        collection = collection_for(self.alias, model)
        if items[0].value.get("deleted"):
            self.store.delete_docs(collection, sorted({item.value["doc_id"] for item in items}))
            return
        points = [Point(point_id(item.value["doc_id"], item.value["passage_index"]),
                        from_bytes(item.value["vector"]).tolist(),
                        {k: v for k, v in item.value.items() if k not in self.exclude})
                  for item in items]
        self.store.upsert(collection, items[0].value["dim"], points)
        if self.store.alias(self.alias) is None:
            self.store.set_alias(self.alias, collection)
        # A document re-split into fewer passages (new model limit, new preprocessing) must not keep its old
        # higher-numbered passages: when its last passage is written, drop any numbered past it.
        self.store.delete_stale(collection, {item.value["doc_id"]: item.value["passage_count"] for item in items
                                             if item.value["passage_index"] == item.value["passage_count"] - 1})
        self._written += len(points)

    # --- HNSW off the hot path ------------------------------------------------------------------------------

    def _optimize_when_idle(self) -> None:
        idle = self.options.optimize_idle_s
        while not self._stop.wait(min(1.0, idle)):
            if self._written and time.monotonic() - self._last_write >= idle:
                self._optimize_all("idle")

    def _optimize_all(self, why: str) -> dict[str, Any]:
        """Optimize every collection behind the alias, one run at a time (a run already going is enough)."""
        if not self._optimize_lock.acquire(blocking=False):
            return {}
        self._optimizing = True
        done = {}
        try:
            self._written = 0
            for name in self._names():
                started = time.perf_counter()
                try:
                    changed = self.store.optimize(name)
                except Exception as exc:  # noqa: BLE001 - an index build must never stop the stage
                    log.warning("store: optimizing %s failed: %s", name, exc)
                    continue
                done[name] = {"optimized": changed, "seconds": round(time.perf_counter() - started, 3)}
                if changed:
                    log.info("store: built the HNSW index of %s (%s) in %.1fs", name, why, done[name]["seconds"])
        finally:
            self._optimizing = False
            self._optimize_lock.release()
        return done

    def _names(self) -> list[str]:
        return [n for n in self.store.collections() if n.startswith(f"{self.alias}--")]

    # --- routes ---------------------------------------------------------------------------------------------

    def routes(self) -> dict[str, Route]:
        return {"/search": self.search, "/stats": self.stats, "/quality": self.quality,
                "/collections": self.collections, "/promote": self.promote, "/optimize": self.optimize}

    def _collection(self, body: dict[str, Any]) -> str | None:
        """The collection a request names, or the alias; None when neither exists yet."""
        name = body.get("collection") or self.alias
        return name if self.store.exists(name) else None

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        """{"vector": [...], "k": 5, "label": null, "where": {"key": value}, "collection": null, "exact": false}
        -> the nearest points with payloads, and how long the vector store took."""
        if not isinstance(body.get("vector"), list):
            raise ValueError("give 'vector' as a list of floats")
        where = dict(body.get("where") or {})
        if not isinstance(where, dict):
            raise ValueError("give 'where' as an object of payload field -> value")
        if body.get("label"):
            where["label"] = body["label"]
        collection = self._collection(body)
        if collection is None:
            return {"hits": [], "took_ms": 0.0}
        started = time.perf_counter()
        hits = self.store.search(collection, body["vector"], int(body.get("k", 5)), where,
                                 exact=bool(body.get("exact")))
        took = (time.perf_counter() - started) * 1000
        return {"hits": [{"id": h.id, "score": h.score, "payload": h.payload} for h in hits], "took_ms": took}

    def stats(self, body: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(body)
        count = self.store.count(collection) if collection else 0
        return {"collection": body.get("collection") or self.alias, "points": count}

    def quality(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stored labels against a ground-truth metadata field ({"truth": "label"}), over every point."""
        field = body.get("truth", "label")
        collection = self._collection(body)
        truth, predicted = [], []
        for _, payload in self.store.scroll(collection) if collection else ():
            if field in (payload.get("metadata") or {}):
                truth.append(payload["metadata"][field])
                predicted.append(payload["label"])
        return classifier_quality(truth, predicted)

    def collections(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every collection behind the alias, its size and index state, and which one the alias points at."""
        target = self.store.alias(self.alias)
        found = []
        for name in self._names():
            info = self.store.info(name)
            found.append({"name": name, "points": self.store.count(name), "indexed": info["indexed"],
                          "active": name == target})
        return {"alias": self.alias, "target": target, "optimizing": self._optimizing, "collections": found}

    def promote(self, body: dict[str, Any]) -> dict[str, Any]:
        """Point the alias at another collection in one atomic step; the old collection stays."""
        name = body.get("collection")
        known = self._names()
        if name not in known:
            raise ValueError(f"no collection '{name}' behind alias {self.alias} (collections: {', '.join(known)})")
        previous = self.store.alias(self.alias)
        self.store.set_alias(self.alias, name)
        return {"alias": self.alias, "previous": previous, "target": name}

    def optimize(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start building the HNSW graph of every collection behind the alias, in the background (searches go on
        meanwhile, writes wait); /collections says when it is done. {"wait": true} returns when it is."""
        if body.get("wait"):
            return {"started": True, "collections": self._optimize_all("asked")}
        started = not self._optimizing
        if started:
            self._optimizing = True  # seen by /collections at once, before the thread takes the lock
            thread = threading.Thread(target=self._optimize_all, args=("asked",), name="store-optimize-now")
            thread.start()
            self._background.append(thread)
        return {"started": started}

    def close(self) -> None:
        self._stop.set()
        for thread in [self._idle, *self._background]:
            if thread is not None:
                thread.join()
        if self._written >= self.options.optimize_after_points:  # e.g. the end of a backfill
            self._optimize_all(f"{self._written} points written")
        self.store.close()


def _kind(item: Incoming) -> tuple[bool, str]:
    return bool(item.value.get("deleted")), item.value["model_id"]
