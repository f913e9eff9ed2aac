"""A store stage whose vector store fails like an unreachable Qdrant server while a flag file exists (test fault)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qdrant_client.http.exceptions import ResponseHandlingException

from stages.store import StoreOptions, StoreStage


class _Outage:
    def __init__(self, real: Any, flag: Path) -> None:
        self.real, self.flag = real, flag

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if callable(attr) and self.flag.exists():
            def unreachable(*args: Any, **kwargs: Any) -> Any:
                raise ResponseHandlingException(ConnectionRefusedError(f"injected outage ({name})"))
            return unreachable
        return attr


class FlakyStoreStage(StoreStage):
    class Options(StoreOptions):
        outage_flag: str  # Qdrant "fails" while this file exists

    def setup(self) -> None:
        super().setup()
        self.store = _Outage(self.store, Path(self.options.outage_flag))


class PoisonStoreStage(StoreStage):
    """Raises (a stage bug, not a Reject) on any batch holding a document whose id starts with 'poison'."""

    def process(self, batch):  # type: ignore[override]
        if any(item.value["doc_id"].startswith("poison") for item in batch):
            raise ValueError("cannot store a poison document")
        return super().process(batch)
