"""What every command shares: the topology file and broker address given on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer
import yaml
from rich.console import Console

from pipeline.config import Topology, load_topology
from pipeline.errors import ConfigError

console = Console(stderr=True)  # messages and tables; stdout is kept for data (consume)
out = Console()


@dataclass
class Settings:
    config: str | None = None
    bootstrap: str | None = None
    _topology: Topology | None = field(default=None, repr=False)

    def use_bootstrap(self, bootstrap: str) -> None:
        """Point at another broker (e.g. one just started); the topology is loaded again with it."""
        self.bootstrap = bootstrap
        self._topology = None

    def topology(self) -> Topology:
        if self._topology is None:
            self._topology = load_topology(self.config, self.bootstrap)
        return self._topology


def override_stage(topology: Topology, stage: str, options: list[str] | None, group: str | None,
                   web_port: int | None) -> None:
    """Apply --option KEY=VALUE (YAML values), --group and --web-port to one stage of a loaded topology, e.g.
    to run a second lane of a stage with another model under its own consumer group."""
    spec = topology.stage(stage)
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, not '{item}'")
        spec.options[key] = yaml.safe_load(value)
    if group:
        spec.group = group
    if web_port:
        spec.web_port = web_port


def settings(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if root.obj is None:
        root.obj = Settings()
    return root.obj
