"""The whole pipeline at a glance: per stage, its group, lag, recent throughput and dead letters, from Kafka."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import Topology
from pipeline.kafka.offsets import group_state, stage_lag, topic_end_offsets


@dataclass(frozen=True)
class StageStatus:
    stage: str
    group: str
    state: str
    members: int
    lag: int
    consumed: int  # records the group has committed past, over all input partitions
    dead_letters: int  # records in the stage's dead-letter topic


def snapshot(topology: Topology) -> dict[str, StageStatus]:
    """Every stage's status as the broker sees it now."""
    found = {}
    for name, spec in topology.stages.items():
        state = group_state(topology, spec.group)
        rows = stage_lag(topology, name)
        dead = sum(topic_end_offsets(topology, spec.dead_letter).values()) if spec.dead_letter else 0
        found[name] = StageStatus(name, spec.group, state.state, state.members, sum(r.lag for r in rows),
                                  sum(r.end - r.start - r.lag for r in rows), dead)
    return found


class Throughput:
    """Records/s per stage (or bridge) over a sliding window, from the counts of successive snapshots."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def add(self, statuses: Mapping[str, Any], now: float | None = None) -> None:
        """One reading: anything with `consumed` (a count that only grows; None: not known this time)."""
        now = time.monotonic() if now is None else now
        for name, status in statuses.items():
            if status.consumed is None:
                continue
            samples = self.samples.setdefault(name, deque())
            samples.append((now, status.consumed))
            while len(samples) > 2 and now - samples[1][0] >= self.window:
                samples.popleft()

    def rate(self, stage: str) -> tuple[float, float] | None:
        """(records/s, seconds it was measured over), or None before two snapshots."""
        samples = self.samples.get(stage)
        if not samples or len(samples) < 2:
            return None
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        return max(0, c1 - c0) / (t1 - t0), t1 - t0
