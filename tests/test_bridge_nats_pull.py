"""The NATS source's pull requests on JetStream's wire API: what is there comes at once, a message published
while a pull waits comes with it, an idle read ends empty, and a pull JetStream refuses raises."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from pipeline.bridges.nats import NatsSource
from pipeline.config import BridgeSource
from pipeline.errors import PipelineError


def test_nats_source_reads_by_pull_requests_and_says_when_jetstream_refuses(nats_url: str):
    tag = uuid.uuid4().hex[:8]
    spec = BridgeSource(kind="nats", url=nats_url, stream=f"PULL-{tag}", subject=f"pull.{tag}", batch=10,
                        block_ms=500, dead_letter="unused")

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes], str]:
        source = NatsSource("nats", spec)
        await source.open()
        client = await nats.connect(nats_url)
        js = client.jetstream()
        for i in range(3):
            await js.publish(spec.subject, b"now-%d" % i)
        there = await source.read()
        await source.ack(there)
        idle = await source.read()

        async def publish_later() -> None:
            await asyncio.sleep(0.2)
            await js.publish(spec.subject, b"later")

        later = asyncio.create_task(publish_later())
        waited = await source.read()  # a pull that waits gets the message published meanwhile
        await later
        await source.ack(waited)
        await js.delete_consumer(spec.stream, source.durable)
        try:
            with pytest.raises(PipelineError) as refused:
                await source.read()
        finally:
            await client.close()
            await source.close()
        return [m.body for m in there], [m.body for m in idle], [m.body for m in waited], str(refused.value)

    there, idle, waited, refused = asyncio.run(scenario())
    assert there == [b"now-0", b"now-1", b"now-2"] and idle == [] and waited == [b"later"]
    assert "status 503" in refused and spec.stream in refused
