"""The bridges' rows in `pipeline status`: a sink's consumer group lag from Kafka, a source's counters and backlog
from its own /metrics page (never from the other broker, which could hang), and each one's dead letters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pipeline.config import Topology
from pipeline.kafka.offsets import group_lag, group_state, topic_end_offsets
from pipeline.runtime.metrics import read_metrics

METRICS_TIMEOUT_S = 1.0  # a source bridge that does not answer its /metrics by then is shown as down


@dataclass(frozen=True)
class BridgeStatus:
    bridge: str
    direction: str  # in (a source: another broker into Kafka) or out (a sink: Kafka to another broker)
    route: str  # e.g. redis:docs -> docs.raw
    state: str  # source: up, stuck, down or no web_port; sink: its consumer group's state
    members: int | None  # sink: members of its group; source: None
    backlog: int | None  # source: messages waiting at the source; sink: its group's lag; None: unknown
    consumed: int | None  # records moved so far (sink: committed; source: produced since it started), for rates
    messages_in: int | None  # source: read from the source since it started
    dead_letters: int  # records in its dead-letter topic
    dead_letter_topic: str
    shared: bool  # the dead-letter topic is also another bridge's or stage's, so the count is theirs too


def _dead_letter_users(topology: Topology) -> Counter[str]:
    return Counter([s.dead_letter for s in topology.stages.values()]
                   + [b.dead_letter for b in topology.bridges.sources.values()]
                   + [b.dead_letter for b in topology.bridges.sinks.values()])


def source_metrics(host: str, port: int, timeout: float = METRICS_TIMEOUT_S) -> dict[str, float] | None:
    """A source bridge's series from its /metrics page, or None when it does not answer within `timeout`."""
    try:
        return read_metrics(f"http://{host}:{port}/metrics", timeout)
    except (OSError, ValueError):  # refused, timed out, or not a metrics page
        return None


def bridge_snapshot(topology: Topology, host: str = "127.0.0.1") -> dict[str, BridgeStatus]:
    """Every declared bridge's status now; source bridges' web ports are asked on `host`."""
    users = _dead_letter_users(topology)
    counts: dict[str, int] = {}

    def dead(topic: str) -> int:
        if topic not in counts:
            counts[topic] = sum(topic_end_offsets(topology, topic).values())
        return counts[topic]

    found: dict[str, BridgeStatus] = {}
    for name, source in topology.bridges.sources.items():
        target = source.topic or topology.ingest_topic()
        route = f"{source.kind}:{source.stream or source.queue} -> {target}"
        m = source_metrics(host, source.web_port) if source.web_port else None
        if m is None:
            state = "no web_port" if not source.web_port else "down"
            backlog = consumed = messages_in = None
        else:
            state = "stuck" if m.get("pipeline_bridge_stuck") else "up"
            backlog = int(m.get("pipeline_bridge_source_backlog", 0))
            consumed = int(m.get("pipeline_bridge_messages_out_total", 0))
            messages_in = int(m.get("pipeline_bridge_messages_in_total", 0))
        found[name] = BridgeStatus(name, "in", route, state, None, backlog, consumed, messages_in,
                                   dead(source.dead_letter), source.dead_letter, users[source.dead_letter] > 1)
    for name, sink in topology.bridges.sinks.items():
        target = sink.stream or sink.subject or sink.exchange or sink.routing_key
        group = group_state(topology, sink.group)
        rows = group_lag(topology, sink.group, sink.topic)
        found[name] = BridgeStatus(name, "out", f"{sink.topic} -> {sink.kind}:{target}", group.state, group.members,
                                   sum(r.lag for r in rows), sum(r.end - r.start - r.lag for r in rows), None,
                                   dead(sink.dead_letter), sink.dead_letter, users[sink.dead_letter] > 1)
    return found
