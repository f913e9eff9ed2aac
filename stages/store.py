"""Store: upsert labelled vectors into Qdrant under deterministic ids, and serve search on the web port."""

from __future__ import annotations

import os
import uuid
from typing import Any

from pipeline.errors import ConfigError
from pipeline.stage import Incoming, Result, Route, Stage, TransientError
from stages.classifier import quality as classifier_quality
from stages.model import from_bytes

# Point ids are UUIDv5 of "doc_id#passage_index": a replay or a restart rewrites the same points.
POINT_NAMESPACE = uuid.UUID("6f1c0b5e-8a47-4f3e-9a55-1f1f0c2d7e11")
PAYLOAD_FIELDS = ("doc_id", "passage_index", "passage_count", "text", "content_hash", "title", "source",
                  "metadata", "lineage", "model_id", "label", "score", "scores", "classifier_id")


def point_id(doc_id: str, passage_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}#{passage_index}"))


def connect(options: dict[str, Any], resolve_path: Any) -> Any:
    """A Qdrant client: a server by `url` (API key from the env var `api_key_env`), else embedded local mode."""
    from qdrant_client import QdrantClient

    if options.get("url"):
        key_env = options.get("api_key_env", "QDRANT_API_KEY")
        return QdrantClient(url=options["url"], api_key=os.environ.get(key_env) or None, timeout=10)
    return QdrantClient(path=str(resolve_path(options.get("path", "var/qdrant"))))


def _transient(exc: Exception) -> bool:
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError))


class StoreStage(Stage):
    def setup(self) -> None:
        self.collection = self.options.get("collection", "docs")
        try:
            self.client = connect(self.options, self.topology.resolve_path)
        except RuntimeError as exc:  # local mode: another process holds the folder
            raise ConfigError(f"cannot open Qdrant storage: {exc}") from None
        self._ready: set[str] = set()

    def _ensure_collection(self, name: str, dim: int) -> None:
        from qdrant_client import models

        if name in self._ready:
            return
        if not self.client.collection_exists(name):
            self.client.create_collection(
                name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
            if self.options.get("url"):  # local mode ignores payload indexes (and warns)
                self.client.create_payload_index(name, "label", models.PayloadSchemaType.KEYWORD)
                self.client.create_payload_index(name, "doc_id", models.PayloadSchemaType.KEYWORD)
                self.client.create_payload_index(name, "passage_index", models.PayloadSchemaType.INTEGER)
        self._ready.add(name)

    def process(self, batch: list[Incoming]) -> list[Result]:
        from qdrant_client import models

        points = [
            models.PointStruct(
                id=point_id(item.value["doc_id"], item.value["passage_index"]),
                vector=from_bytes(item.value["vector"]).tolist(),
                payload={k: item.value[k] for k in PAYLOAD_FIELDS},
            )
            for item in batch
        ]
        try:
            self._ensure_collection(self.collection, batch[0].value["dim"])
            self.client.upsert(self.collection, points=points, wait=True)
            self._delete_stale(batch)
        except Exception as exc:
            if _transient(exc):
                raise TransientError(f"Qdrant unavailable: {exc}") from exc
            raise
        return [[] for _ in batch]

    def _delete_stale(self, batch: list[Incoming]) -> None:
        """A document re-split into fewer passages (new model limit, new preprocessing) must not keep its old
        higher-numbered passages. Ids are deterministic, so probe passage_count, +1, ... by id when a
        document's last passage is written (one lookup per batch in the usual case: nothing stale)."""
        from qdrant_client import models

        probe = {item.value["doc_id"]: item.value["passage_count"] for item in batch
                 if item.value["passage_index"] == item.value["passage_count"] - 1}
        while probe:
            ids = {point_id(doc_id, index): (doc_id, index) for doc_id, index in probe.items()}
            found = self.client.retrieve(self.collection, list(ids), with_payload=False, with_vectors=False)
            if not found:
                return
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=[p.id for p in found]),
                               wait=True)
            probe = {ids[str(p.id)][0]: ids[str(p.id)][1] + 1 for p in found}

    def routes(self) -> dict[str, Route]:
        return {"/search": self.search, "/stats": self.stats, "/quality": self.quality}

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        """{"vector": [...], "k": 5, "label": null} -> the nearest points with their payloads."""
        from qdrant_client import models

        if not isinstance(body.get("vector"), list):
            raise ValueError("give 'vector' as a list of floats")
        query_filter = None
        if body.get("label"):
            query_filter = models.Filter(must=[
                models.FieldCondition(key="label", match=models.MatchValue(value=body["label"]))])
        collection = body.get("collection") or self.collection
        if not self.client.collection_exists(collection):
            return {"hits": []}
        found = self.client.query_points(collection, query=body["vector"], query_filter=query_filter,
                                         limit=int(body.get("k", 5)), with_payload=True)
        return {"hits": [{"id": str(p.id), "score": p.score, "payload": p.payload} for p in found.points]}

    def stats(self, body: dict[str, Any]) -> dict[str, Any]:
        collection = body.get("collection") or self.collection
        exists = self.client.collection_exists(collection)
        count = self.client.count(collection, exact=True).count if exists else 0
        return {"collection": collection, "points": count}

    def quality(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stored labels against a ground-truth metadata field ({"truth": "label"}), over every point."""
        field = body.get("truth", "label")
        collection = body.get("collection") or self.collection
        truth, predicted, offset = [], [], None
        while self.client.collection_exists(collection):
            points, offset = self.client.scroll(collection, limit=1000, offset=offset, with_payload=True)
            for p in points:
                if field in (p.payload.get("metadata") or {}):
                    truth.append(p.payload["metadata"][field])
                    predicted.append(p.payload["label"])
            if offset is None:
                break
        return classifier_quality(truth, predicted)

    def close(self) -> None:
        self.client.close()
