"""Store: upsert labelled vectors into Qdrant under deterministic ids, and serve search on the web port."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import pipeline
from pipeline import Incoming, Result, Route, Stage, TransientError
from pipeline.errors import ConfigError
from stages.classifier import quality as classifier_quality
from stages.model import from_bytes

# Point ids are UUIDv5 of "doc_id#passage_index": a replay or a restart rewrites the same points.
POINT_NAMESPACE = uuid.UUID("6f1c0b5e-8a47-4f3e-9a55-1f1f0c2d7e11")


class StoreOptions(pipeline.Options):
    path: str = "var/qdrant"  # embedded local mode, relative to topics.yaml
    url: str | None = None  # a Qdrant server instead (API key from the env var api_key_env)
    api_key_env: str = "QDRANT_API_KEY"
    collection: str = "docs"  # the alias search uses; each model's vectors get their own collection behind it
    # Input fields left out of a point's payload; every other field is kept, so new fields flow through.
    payload_exclude: list[str] = ["vector"]


def collection_for(alias: str, model_id: str) -> str:
    """Each model's vectors live in their own collection; the alias (what search uses) points at one of them."""
    return f"{alias}--{re.sub(r'[^A-Za-z0-9_.-]+', '_', model_id)}"


def point_id(doc_id: str, passage_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}#{passage_index}"))


def connect(options: StoreOptions, resolve_path: Any) -> Any:
    """A Qdrant client: a server by `url` (API key from the env var `api_key_env`), else embedded local mode."""
    from qdrant_client import QdrantClient

    if options.url:
        return QdrantClient(url=options.url, api_key=os.environ.get(options.api_key_env) or None, timeout=10)
    return QdrantClient(path=str(resolve_path(options.path)))


def local_storage(client: Any, collection: str) -> Any:
    """The sqlite connection behind a local-mode collection (qdrant-client internals), or None for a server."""
    local = getattr(client, "_client", None)
    found = getattr(local, "collections", {}).get(collection)
    return getattr(getattr(found, "storage", None), "storage", None)


def _transient(exc: Exception) -> bool:
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError))


class StoreStage(Stage):
    Options = StoreOptions
    options: StoreOptions

    def setup(self) -> None:
        self.alias = self.options.collection
        self.exclude = set(self.options.payload_exclude)
        try:
            self.client = connect(self.options, self.topology.resolve_path)
        except RuntimeError as exc:  # local mode: another process holds the folder
            raise ConfigError(f"cannot open Qdrant storage: {exc}") from None
        self._ready: set[str] = set()

    def _ensure_collection(self, model: str, dim: int) -> str:
        """The model's collection, created on first use; the alias is created too if there is none yet."""
        from qdrant_client import models

        name = collection_for(self.alias, model)
        if name in self._ready:
            return name
        if not self.client.collection_exists(name):
            self.client.create_collection(
                name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
            if self.options.url:  # local mode ignores payload indexes (and warns)
                self.client.create_payload_index(name, "label", models.PayloadSchemaType.KEYWORD)
                self.client.create_payload_index(name, "doc_id", models.PayloadSchemaType.KEYWORD)
                self.client.create_payload_index(name, "passage_index", models.PayloadSchemaType.INTEGER)
        if self.alias_target() is None:
            self.client.update_collection_aliases([models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=self.alias))])
        storage = local_storage(self.client, name)
        if storage is not None:
            # Local mode commits every point on its own (an fsync each: ~1 ms). In WAL mode with
            # synchronous=NORMAL a commit is a write; the checkpoint after each batch (process) fsyncs the
            # whole batch before the runtime acks it, so nothing acked can be lost.
            storage.execute("PRAGMA journal_mode=WAL")
            storage.execute("PRAGMA synchronous=NORMAL")
        self._ready.add(name)
        return name

    def alias_target(self) -> str | None:
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == self.alias:
                return alias.collection_name
        return None

    def process(self, batch: list[Incoming]) -> list[Result]:
        from qdrant_client import models

        by_model: dict[str, list[Incoming]] = {}
        for item in batch:  # during a re-embed one batch may carry vectors of two models
            by_model.setdefault(item.value["model_id"], []).append(item)
        try:
            for model, items in by_model.items():
                collection = self._ensure_collection(model, items[0].value["dim"])
                points = [
                    models.PointStruct(
                        id=point_id(item.value["doc_id"], item.value["passage_index"]),
                        vector=from_bytes(item.value["vector"]).tolist(),
                        payload={k: v for k, v in item.value.items() if k not in self.exclude},
                    )
                    for item in items
                ]
                self.client.upsert(collection, points=points, wait=True)
                self._delete_stale(collection, items)
                storage = local_storage(self.client, collection)
                if storage is not None:
                    storage.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:
            if _transient(exc):
                raise TransientError(f"Qdrant unavailable: {exc}") from exc
            raise
        return [[] for _ in batch]

    def _delete_stale(self, collection: str, batch: list[Incoming]) -> None:
        """A document re-split into fewer passages (new model limit, new preprocessing) must not keep its old
        higher-numbered passages. Ids are deterministic, so probe passage_count, +1, ... by id when a
        document's last passage is written (one lookup per batch in the usual case: nothing stale)."""
        from qdrant_client import models

        probe = {item.value["doc_id"]: item.value["passage_count"] for item in batch
                 if item.value["passage_index"] == item.value["passage_count"] - 1}
        while probe:
            ids = {point_id(doc_id, index): (doc_id, index) for doc_id, index in probe.items()}
            found = self.client.retrieve(collection, list(ids), with_payload=False, with_vectors=False)
            if not found:
                return
            self.client.delete(collection, points_selector=models.PointIdsList(points=[p.id for p in found]),
                               wait=True)
            probe = {ids[str(p.id)][0]: ids[str(p.id)][1] + 1 for p in found}

    def routes(self) -> dict[str, Route]:
        return {"/search": self.search, "/stats": self.stats, "/quality": self.quality,
                "/collections": self.collections, "/promote": self.promote}

    def _collection(self, body: dict[str, Any]) -> str | None:
        """The collection a request names, or the alias; None when neither exists yet."""
        name = body.get("collection") or self.alias
        return name if self.client.collection_exists(name) else None

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        """{"vector": [...], "k": 5, "label": null, "collection": null} -> the nearest points with payloads."""
        from qdrant_client import models

        if not isinstance(body.get("vector"), list):
            raise ValueError("give 'vector' as a list of floats")
        query_filter = None
        if body.get("label"):
            query_filter = models.Filter(must=[
                models.FieldCondition(key="label", match=models.MatchValue(value=body["label"]))])
        collection = self._collection(body)
        if collection is None:
            return {"hits": []}
        found = self.client.query_points(collection, query=body["vector"], query_filter=query_filter,
                                         limit=int(body.get("k", 5)), with_payload=True)
        return {"hits": [{"id": str(p.id), "score": p.score, "payload": p.payload} for p in found.points]}

    def stats(self, body: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(body)
        count = self.client.count(collection, exact=True).count if collection else 0
        return {"collection": body.get("collection") or self.alias, "points": count}

    def quality(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stored labels against a ground-truth metadata field ({"truth": "label"}), over every point."""
        field = body.get("truth", "label")
        collection = self._collection(body)
        truth, predicted, offset = [], [], None
        while collection:
            points, offset = self.client.scroll(collection, limit=1000, offset=offset, with_payload=True)
            for p in points:
                if field in (p.payload.get("metadata") or {}):
                    truth.append(p.payload["metadata"][field])
                    predicted.append(p.payload["label"])
            if offset is None:
                break
        return classifier_quality(truth, predicted)

    def collections(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every collection behind the alias, its size, and which one the alias points at."""
        target = self.alias_target()
        names = sorted(c.name for c in self.client.get_collections().collections
                       if c.name.startswith(f"{self.alias}--"))
        return {"alias": self.alias, "target": target, "collections": [
            {"name": n, "points": self.client.count(n, exact=True).count, "active": n == target} for n in names]}

    def promote(self, body: dict[str, Any]) -> dict[str, Any]:
        """Point the alias at another collection in one atomic alias update; the old collection stays."""
        from qdrant_client import models

        name = body.get("collection")
        known = [c["name"] for c in self.collections({})["collections"]]
        if name not in known:
            raise ValueError(f"no collection '{name}' behind alias {self.alias} (collections: {', '.join(known)})")
        operations = [models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=name, alias_name=self.alias))]
        previous = self.alias_target()
        if previous is not None:
            operations.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)))
        self.client.update_collection_aliases(operations)
        return {"alias": self.alias, "previous": previous, "target": name}

    def close(self) -> None:
        self.client.close()
