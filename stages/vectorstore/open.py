"""Open the store an options block names; list a store path's points (tests and tools, store stopped)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stages.vectorstore.base import IndexType, VectorStore


def open_store(path: str | Path, url: str | None = None, api_key_env: str = "QDRANT_API_KEY",
               indexes: dict[str, IndexType] | None = None) -> VectorStore:
    """A Qdrant server by `url` (":memory:" for qdrant-client's in-memory mode), else Qdrant Edge at `path`."""
    if url:
        from stages.vectorstore.server import ServerStore

        return ServerStore(url, os.environ.get(api_key_env) or None, indexes)
    from stages.vectorstore.edge import EdgeStore

    return EdgeStore(path, indexes)


def stored_points(path: str | Path, collection: str = "docs") -> dict[str, dict[str, Any]]:
    """Every point of a collection (or alias) in an embedded store path, id -> payload; {} when there is none.
    The store stage must be stopped (a path has one owner)."""
    from stages.vectorstore.edge import EdgeStore

    store = EdgeStore(path)
    try:
        return dict(store.scroll(collection)) if store.exists(collection) else {}
    finally:
        store.close()
