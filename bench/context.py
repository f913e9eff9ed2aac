"""What every benchmark part gets: the run's settings, its texts, the results so far, and the broker on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness import Bench
from pipeline.config import Topology


@dataclass
class Context:
    device: str  # cpu or cuda
    quick: bool
    model: str
    topology: Topology  # the repository's topics.yaml
    documents: list[dict[str, Any]]
    passages: list[dict[str, Any]]  # what preprocess makes of `documents`
    seed: int
    stage_records: int
    steady_seconds: float
    workdir: Path
    bootstrap: str | None
    broker_port: int
    port_shift: int
    console: Console
    results: dict[str, Any] = field(default_factory=dict)
    _bench: Bench | None = None

    @property
    def texts(self) -> list[str]:
        return [p["text"] for p in self.passages]

    @property
    def bench(self) -> Bench:
        """The broker (started on first use) and the stage processes of this run."""
        if self._bench is None:
            self._bench = Bench(self.workdir, self.bootstrap, self.broker_port, self.device, self.port_shift)
        return self._bench

    def close(self) -> None:
        if self._bench is not None:
            self._bench.close()
