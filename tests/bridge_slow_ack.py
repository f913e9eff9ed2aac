"""`pipeline bridge in ...` with a pause between Kafka's acknowledgement of a batch and its ack at the source, so
that a test's SIGKILL or server outage lands in that window (the batch must then come again: a duplicate, never a
loss); its backlog gauge is read every second."""

from __future__ import annotations

import asyncio
import sys

from pipeline.bridges import base

PAUSE_S = 3.0
_ack = base.SourceBridge._ack


async def _slow_ack(self: base.SourceBridge, batch: list) -> None:
    await asyncio.sleep(PAUSE_S)
    await _ack(self, batch)


base.SourceBridge._ack = _slow_ack
base.BACKLOG_EVERY_S = 1.0  # tests wait for the backlog gauge to reach 0

if __name__ == "__main__":
    from pipeline.cli import main

    sys.argv = ["pipeline", *sys.argv[1:]]
    main()
