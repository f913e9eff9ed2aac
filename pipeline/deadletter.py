"""Dead-letter records: the original key and value bytes untouched, the reason in headers (Kafka Connect style)."""

from __future__ import annotations

import time

PREFIX = "pipeline.error."


def error_headers(
    stage: str, reason: str, error_class: str, message: str, topic: str, partition: int, offset: int,
) -> list[tuple[str, bytes]]:
    """Headers that say why and where a record failed; `pipeline dlq` groups by `reason`."""
    fields = {
        "stage": stage,
        "reason": reason,
        "class": error_class,
        "message": message[:2000],
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "time_ms": str(int(time.time() * 1000)),
    }
    return [(PREFIX + k, v.encode()) for k, v in fields.items()]


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The error fields of a dead letter's headers, without the prefix."""
    return {
        k.removeprefix(PREFIX): (v or b"").decode(errors="replace")
        for k, v in (headers or []) if k.startswith(PREFIX)
    }
