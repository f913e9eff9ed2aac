"""Resetting a stage's committed offsets, with the targets of Kafka's `kafka-consumer-groups --reset-offsets`."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions

from pipeline.kafka.clients import admin
from pipeline.config import Topology
from pipeline.errors import KafkaUnavailable, PipelineError
from pipeline.kafka.offsets import PartitionLag, group_state, offsets_at, stage_lag

TargetKind = Literal["earliest", "latest", "datetime", "offset", "shift", "duration"]
_DURATION = re.compile(r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$")


def parse_duration(text: str) -> timedelta:
    """ISO 8601 durations as Kafka's tool takes them: PnDTnHnMnS (e.g. PT2H, P1DT30M)."""
    match = _DURATION.match(text.upper())
    if not match or text.upper() in ("P", "PT"):
        raise PipelineError(f"'{text}' is not an ISO 8601 duration such as PT2H, PT15M or P1DT12H")
    return timedelta(**{k: int(v) for k, v in match.groupdict().items() if v})


def parse_datetime(text: str) -> datetime:
    """ISO 8601 date-time; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PipelineError(f"'{text}' is not an ISO 8601 date-time such as 2026-11-27T10:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    value: int | datetime | timedelta | None = None

    def describe(self) -> str:
        return self.kind if self.value is None else f"{self.kind} {self.value}"


@dataclass(frozen=True)
class ResetRow:
    partition: int
    current: int | None
    new: int
    start: int
    end: int

    @property
    def to_reprocess(self) -> int:
        return self.end - self.new




def plan_reset(topology: Topology, stage: str, target: Target, partitions: list[int] | None = None) -> list[ResetRow]:
    """Where each partition's committed offset would move; nothing is changed."""
    rows: list[PartitionLag] = stage_lag(topology, stage)
    if partitions is not None:
        unknown = set(partitions) - {r.partition for r in rows}
        if unknown:
            raise PipelineError(f"{topology.stages[stage].input} has no partition(s) {sorted(unknown)}")
        rows = [r for r in rows if r.partition in partitions]
    at_time: dict[int, int] = {}
    if target.kind in ("datetime", "duration"):
        moment = target.value if target.kind == "datetime" else datetime.now(timezone.utc) - target.value
        at_time = offsets_at(topology, topology.stages[stage].input, [r.partition for r in rows], moment)
    plan = []
    for r in rows:
        current = r.committed
        if target.kind == "earliest":
            new = r.start
        elif target.kind == "latest":
            new = r.end
        elif target.kind == "offset":
            new = target.value
        elif target.kind == "shift":
            new = (current if current is not None else r.start) + target.value
        else:  # datetime / duration: partitions with nothing after that time go to the end
            new = at_time[r.partition] if at_time[r.partition] >= 0 else r.end
        plan.append(ResetRow(r.partition, current, min(max(new, r.start), r.end), r.start, r.end))
    return plan


def wait_until_empty(topology: Topology, group: str, timeout: float, poll: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while group_state(topology, group).active:
        if time.monotonic() > deadline:
            raise PipelineError(f"group {group} still has active members after {timeout:.0f}s")
        time.sleep(poll)


def refuse_if_active(topology: Topology, stage: str) -> None:
    group = topology.stages[stage].group
    state = group_state(topology, group)
    if state.active:
        raise PipelineError(
            f"group {group} has {state.members} active member(s) ({state.state}): stop the {stage} stage first "
            f"(Ctrl-C its `pipeline run {stage}`, or scale its Deployment to 0), or pass --wait"
        )


def apply_reset(topology: Topology, stage: str, plan: list[ResetRow]) -> None:
    """Commit the planned offsets for the stage's group (the group must be empty)."""
    spec = topology.stages[stage]
    request = ConsumerGroupTopicPartitions(spec.group, [TopicPartition(spec.input, r.partition, r.new) for r in plan])
    client = admin(topology)  # keep a reference: a collected client never resolves its futures
    try:
        for fut in client.alter_consumer_group_offsets([request]).values():
            fut.result()
    except KafkaException as exc:
        raise KafkaUnavailable(f"resetting offsets of {spec.group}: {exc}") from None
