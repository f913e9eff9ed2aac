"""What every command shares: the topology file and broker address given on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer
from rich.console import Console

from pipeline.config import Topology, load_topology

console = Console(stderr=True)  # messages and tables; stdout is kept for data (consume)
out = Console()


@dataclass
class Settings:
    config: str | None = None
    bootstrap: str | None = None
    _topology: Topology | None = field(default=None, repr=False)

    def topology(self) -> Topology:
        if self._topology is None:
            self._topology = load_topology(self.config, self.bootstrap)
        return self._topology


def settings(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if root.obj is None:
        root.obj = Settings()
    return root.obj
