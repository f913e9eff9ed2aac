"""A bridge's dead letters (`pipeline dlq show/redrive --bridge NAME`): read back by the bridge's stage header from
its dead-letter topic, which several bridges may share. A source's letters are bodies that failed the bridge's
conversion, so redrive sends them through that conversion again (after a fix: a schema that now accepts them, a
larger max_bytes) and produces only the ones that pass; a sink's are Kafka records, redriven byte for byte."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.bridges.base import Converter, Refused
from pipeline.config import Topology, bridge_stage
from pipeline.errors import ConfigError
from pipeline.kafka.dlq import DeadLetter, send_back, topic_dead_letters


def bridge_dead_letter_topic(topology: Topology, name: str) -> str:
    """The dead-letter topic of the source or sink called `name`; ConfigError naming the bridges when none is."""
    bridge = topology.bridges.sources.get(name) or topology.bridges.sinks.get(name)
    if bridge is None:
        known = ", ".join([*topology.bridges.sources, *topology.bridges.sinks]) or "none"
        raise ConfigError(f"no bridge '{name}' in {topology.source} (bridges: {known})")
    return bridge.dead_letter


def bridge_dead_letters(topology: Topology, name: str) -> list[DeadLetter]:
    """The letters the bridge `name` wrote to its dead-letter topic, oldest first per partition."""
    return topic_dead_letters(topology, bridge_dead_letter_topic(topology, name), written_by=bridge_stage(name))


@dataclass
class Redrive:
    """What a source bridge's redrive did: records produced to its topic, and letters still refused (left there)."""

    topic: str
    sent: int = 0
    refused: list[tuple[DeadLetter, Refused]] = field(default_factory=list)


def _convert(converter: Converter, letter: DeadLetter) -> tuple[bytes, bytes | None] | Refused:
    if "truncated_from" in letter.error:  # the bridge kept only the start of a body too large for the topic
        return Refused("truncated", f"only the first {len(letter.value or b''):,} of "
                                    f"{letter.error['truncated_from']} bytes were kept; it cannot be redriven")
    return converter.convert(letter.value or b"")


def redrive_source(topology: Topology, name: str, letters: list[DeadLetter], dry_run: bool = False) -> Redrive:
    """Convert each letter's body as the source bridge `name` does now; produce those that pass to its topic (keyed
    as the bridge keys them, with a redriven-from header), unless `dry_run`; the rest are reported, not sent."""
    converter = Converter(topology, topology.bridge_source(name))
    result = Redrive(converter.topic)
    passed = []
    for letter in letters:
        converted = _convert(converter, letter)
        if isinstance(converted, Refused):
            result.refused.append((letter, converted))
        else:
            value, key = converted
            passed.append((letter.origin, key, value))
    result.sent = len(passed) if dry_run or not passed else send_back(topology, converter.topic, passed)
    return result
