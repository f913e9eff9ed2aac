"""A Qdrant server through qdrant-client (by URL, API key from an env var), or the client's in-memory mode
(`:memory:`, the same client API) that tests run the server path against."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from stages.vectorstore.base import BUILTIN_INDEXES, Hit, IndexType, Point, VectorStore, by_count, filtered_ef


def _filter(where: dict[str, Any] | None) -> Any:
    from qdrant_client import models

    if not where:
        return None
    return models.Filter(must=[models.FieldCondition(key=k, match=models.MatchValue(value=v))
                               for k, v in where.items()])


def is_transient(exc: Exception) -> bool:
    """A failure that passes: the server unreachable, overloaded or failing (5xx, 429)."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError))


class ServerStore(VectorStore):
    def __init__(self, url: str, api_key: str | None = None, indexes: dict[str, IndexType] | None = None) -> None:
        from qdrant_client import QdrantClient

        self.client = QdrantClient(location=":memory:") if url == ":memory:" else \
            QdrantClient(url=url, api_key=api_key, timeout=10)
        self.indexes = {**BUILTIN_INDEXES, **(indexes or {})}
        self._known: set[str] = set()

    def _ensure(self, collection: str, dim: int) -> None:
        from qdrant_client import models

        if collection in self._known:
            return
        if not self.client.collection_exists(collection):
            self.client.create_collection(
                collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
            kinds = {"keyword": models.PayloadSchemaType.KEYWORD, "integer": models.PayloadSchemaType.INTEGER,
                     "float": models.PayloadSchemaType.FLOAT, "bool": models.PayloadSchemaType.BOOL}
            with warnings.catch_warnings():  # the in-memory mode has no payload indexes and says so
                warnings.simplefilter("ignore")
                for field, kind in self.indexes.items():
                    self.client.create_payload_index(collection, field, kinds[kind], wait=True)
        self._known.add(collection)

    def upsert(self, collection: str, dim: int, points: list[Point]) -> None:
        from qdrant_client import models

        self._ensure(collection, dim)
        self.client.upsert(collection, points=[models.PointStruct(id=p.id, vector=p.vector, payload=p.payload)
                                               for p in points], wait=True)

    def delete_docs(self, collection: str, doc_ids: list[str]) -> None:
        from qdrant_client import models

        if not self.client.collection_exists(collection):
            return
        self.client.delete(collection, points_selector=models.FilterSelector(filter=models.Filter(must=[
            models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))])), wait=True)

    def delete_stale(self, collection: str, counts: dict[str, int]) -> None:
        from qdrant_client import models

        if not counts:
            return
        self.client.delete(collection, points_selector=models.FilterSelector(filter=models.Filter(should=[
            models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=docs)),
                                models.FieldCondition(key="passage_index", range=models.Range(gte=n))])
            for n, docs in by_count(counts).items()])), wait=True)

    def search(self, name: str, vector: list[float], k: int, where: dict[str, Any] | None = None,
               exact: bool = False) -> list[Hit]:
        from qdrant_client import models

        params = None
        if exact:
            params = models.SearchParams(exact=True)
        elif where:  # ACORN keeps recall behind a selective filter: see stages/vectorstore/edge.py
            params = models.SearchParams(hnsw_ef=filtered_ef(k), acorn=models.AcornSearchParams(enable=True))
        found = self.client.query_points(name, query=vector, query_filter=_filter(where), limit=k, with_payload=True,
                                         search_params=params)
        return [Hit(str(p.id), p.score, p.payload or {}) for p in found.points]

    def count(self, name: str) -> int:
        return self.client.count(name, exact=True).count

    def scroll(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        offset = None
        while True:
            points, offset = self.client.scroll(name, limit=1000, offset=offset, with_payload=True)
            for p in points:
                yield str(p.id), p.payload or {}
            if offset is None:
                return

    def exists(self, name: str) -> bool:
        return self.client.collection_exists(self.alias(name) or name)

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def alias(self, alias: str) -> str | None:
        for found in self.client.get_aliases().aliases:
            if found.alias_name == alias:
                return found.collection_name
        return None

    def set_alias(self, alias: str, collection: str) -> None:
        from qdrant_client import models

        operations: list[Any] = [models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))]
        if self.alias(alias) is not None:  # delete + create in one request: search never sees a gap
            operations.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        self.client.update_collection_aliases(operations)

    def info(self, name: str) -> dict[str, Any]:
        found = self.client.get_collection(self.alias(name) or name)
        return {"points": found.points_count, "indexed": found.indexed_vectors_count,
                "segments": found.segments_count}

    def optimize(self, name: str) -> bool:
        """A server builds its index by itself in the background (its optimizers); nothing to do here."""
        return False

    def flush(self) -> None:
        """Every write used wait=True: the server has applied it (and its WAL holds it) when upsert returns."""

    def close(self) -> None:
        self.client.close()
