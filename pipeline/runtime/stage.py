"""The stage contract: what a stage's domain code implements and what the runtime hands it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.config import StageSpec, Topology, validation_error
from pipeline.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Incoming:
    """One decoded input record with where it came from; `value` is None for a tombstone (a null value), which
    only a stage with `accepts_tombstones = True` is handed."""

    value: dict[str, Any] | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    prepared: Any = None  # what the stage's prepare() made of this record, if it prepares


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


class Options(BaseModel):
    """Base of a stage's typed options (`stages.NAME.options` in topics.yaml); unknown keys are refused.

    A stage declares its own as a nested class: `class Options(pipeline.Options): top_k: int = 5`."""

    model_config = ConfigDict(extra="forbid")


class Stage:
    """Base class of a stage. Subclasses implement `process`; the runtime owns Kafka, offsets and failures."""

    Options: type[Options] = Options  # a stage with options overrides this with its own model
    # True: a tombstone (null value, e.g. a delete keyed by id) reaches process() as Incoming(value=None);
    # False: the runtime dead-letters it as "empty-value".
    accepts_tombstones: bool = False

    def __init__(self, name: str, spec: StageSpec, topology: Topology) -> None:
        self.name = name
        self.spec = spec
        self.topology = topology
        self.options = validate_options(type(self), topology, name, spec.options)

    def setup(self) -> None:
        """Load models and open connections; runs once in the worker before the first batch."""

    def prepare(self, batch: list[Incoming]) -> list[Incoming]:
        """Optional work that needs no model (e.g. tokenizing), done on the fetch thread while the model is busy
        with the previous batch: the same records, in order, usually with `prepared` set
        (`dataclasses.replace(item, prepared=...)`). process() must still accept records left unprepared."""
        return batch

    def process(self, batch: list[Incoming]) -> list[Result]:
        """For each input, in order: the output records it makes, or a Reject."""
        raise NotImplementedError

    def routes(self) -> dict[str, Route]:
        """JSON endpoints served on the stage's web port, POST /path with a JSON body."""
        return {}

    def close(self) -> None:
        """Release what setup opened."""


def validate_options(cls: type[Stage], topology: Topology, name: str, raw: dict[str, Any]) -> Options:
    """`raw` checked against the stage class's Options model; ConfigError naming the file and each key's path."""
    model = cls.Options
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{cls.__module__}.{cls.__qualname__}.Options must be a pipeline.Options subclass")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(topology.source, exc, ("stages", name, "options")) from None


def stage_class(topology: Topology, name: str) -> type[Stage]:
    """The class a stage's `impl` ("module:Class") names, imported but not instantiated (nothing loaded)."""
    spec = topology.stage(name)
    module_name, class_name = spec.impl.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{topology.source}: stages.{name}.impl: cannot load {spec.impl}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"{topology.source}: stages.{name}.impl: {spec.impl} is not a pipeline.Stage subclass")
    return cls


def stage_options(topology: Topology, name: str) -> Options:
    """A stage's validated options without instantiating it (no model is loaded)."""
    return validate_options(stage_class(topology, name), topology, name, topology.stage(name).options)


def stages_of(topology: Topology, kind: type[Stage]) -> list[str]:
    """Names of the stages whose class is `kind` or a subclass of it, in file order."""
    return [name for name in topology.stages if issubclass(stage_class(topology, name), kind)]


def find_stage(topology: Topology, kind: type[Stage]) -> str:
    """The one stage that is a `kind` (found by its class, whatever its name); ConfigError if none or several."""
    found = stages_of(topology, kind)
    if len(found) != 1:
        impls = ", ".join(f"{n} ({s.impl})" for n, s in topology.stages.items()) or "none"
        which = "no stage" if not found else f"{len(found)} stages ({', '.join(found)})"
        raise ConfigError(f"{topology.source}: {which} of type {kind.__name__}, expected exactly one; "
                          f"stages: {impls}")
    return found[0]


def load_stage(topology: Topology, name: str) -> Stage:
    """Instantiate the stage named in topics.yaml from its `impl`, its options validated (setup not called)."""
    return stage_class(topology, name)(name, topology.stage(name), topology)
