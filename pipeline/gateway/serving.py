"""The capability a stage implements so the gateway can call it in-process, and loading those stages."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pipeline.config import Topology
from pipeline.errors import ConfigError
from pipeline.runtime.stage import Stage, load_stage


@runtime_checkable
class Servable(Protocol):
    """A stage that answers online requests: texts in, one result (a JSON-able dict) per text out, in order.
    The gateway batches requests within the stage's limits and calls `serve` on one model thread."""

    def token_counts(self, texts: list[str]) -> list[int]:
        """The model's input length of each text (word pieces with special tokens)."""

    def token_limits(self) -> tuple[int, int]:
        """(longest text the model takes, padded tokens per call: batch size x longest text)."""

    def serve(self, texts: list[str], tokens: list[int]) -> list[dict[str, Any]]:
        """One result per text; `tokens` are its token_counts."""


def load_servables(topology: Topology, names: list[str]) -> dict[str, Stage]:
    """The named stages instantiated (setup not called), each checked to implement Servable."""
    stages = {}
    for name in dict.fromkeys(names):
        stage = load_stage(topology, name)
        if not isinstance(stage, Servable):
            raise ConfigError(f"{topology.source}: gateway: stage '{name}' ({topology.stage(name).impl}) cannot "
                              "answer online requests: its class needs token_counts(), token_limits() and serve() "
                              "(pipeline.gateway.serving.Servable)")
        stages[name] = stage
    return stages
