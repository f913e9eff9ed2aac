"""The vector store the store stage and search see: one small interface, Qdrant Edge embedded or a Qdrant server."""

from stages.vectorstore.base import Hit, Point, VectorStore, collection_for, parse_where
from stages.vectorstore.open import open_store, stored_points

__all__ = ["Hit", "Point", "VectorStore", "collection_for", "open_store", "parse_where", "stored_points"]
