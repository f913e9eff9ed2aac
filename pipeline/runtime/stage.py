"""The stage contract: what a stage's domain code implements and what the runtime hands it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import StageSpec, Topology
from pipeline.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Incoming:
    """One decoded input record with where it came from."""

    value: dict[str, Any]
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Reject:
    """A permanent failure of one record: the runtime sends its original bytes to the dead-letter topic."""

    reason: str  # short code for grouping, e.g. "empty-text"
    message: str


class TransientError(Exception):
    """The batch failed for a reason that will pass (service down, out of memory): retry it, never skip it."""

    def __init__(self, message: str, shrink: bool = False) -> None:
        super().__init__(message)
        self.shrink = shrink  # out of memory: retry with smaller batches


Result = list[dict[str, Any]] | Reject
Route = Callable[[dict[str, Any]], dict[str, Any]]


class Stage:
    """Base class of a stage. Subclasses implement `process`; the runtime owns Kafka, offsets and failures."""

    def __init__(self, name: str, spec: StageSpec, topology: Topology) -> None:
        self.name = name
        self.spec = spec
        self.topology = topology
        self.options = spec.options

    def setup(self) -> None:
        """Load models and open connections; runs once in the worker before the first batch."""

    def process(self, batch: list[Incoming]) -> list[Result]:
        """For each input, in order: the output records it makes, or a Reject."""
        raise NotImplementedError

    def routes(self) -> dict[str, Route]:
        """JSON endpoints served on the stage's web port, POST /path with a JSON body."""
        return {}

    def close(self) -> None:
        """Release what setup opened."""


def load_stage(topology: Topology, name: str) -> Stage:
    """Instantiate the stage named in topics.yaml from its `impl` ("module:Class")."""
    if name not in topology.stages:
        known = ", ".join(topology.stages) or "none"
        raise ConfigError(f"no stage '{name}' in topics.yaml (stages: {known})")
    spec = topology.stages[name]
    module_name, class_name = spec.impl.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"stages.{name}.impl: cannot load {spec.impl}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"stages.{name}.impl: {spec.impl} is not a pipeline.Stage subclass")
    return cls(name, spec, topology)
