"""The stage's Faust app without Kafka: Faust keeps the agent (fed one event per batch through a channel), its web
views and timers, and starts no consumer, producer or table of its own (the stage's librdkafka consumer is the
only Kafka client that reads)."""

from __future__ import annotations

import asyncio
import tempfile

from pipeline.runtime.app import StageApp


def test_the_stage_app_starts_no_kafka_service() -> None:
    app = StageApp("no-kafka-check", store="memory://", web_enabled=False, datadir=tempfile.mkdtemp())
    services = list(app.boot_strategy.server())
    kinds = {type(s).__name__ for s in services}
    assert "AgentManager" in kinds  # the agents run
    assert not kinds & {"Consumer", "Producer", "TableManager", "Conductor", "LeaderAssignor", "ReplyConsumer"}, kinds


def test_an_agent_on_a_channel_gets_whole_batches_without_a_broker() -> None:
    app = StageApp("no-kafka-agent", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False,
                   datadir=tempfile.mkdtemp())
    channel = app.channel(maxsize=4)
    got: list[list[int]] = []
    ticks: list[int] = []

    @app.agent(channel)
    async def agent(stream):
        async for batch in stream:
            got.append(batch)

    @app.timer(0.05)
    async def tick() -> None:
        ticks.append(1)

    async def main() -> None:
        await app.start()
        app.flow_control.resume()
        for batch in ([1, 2, 3], [4], [5, 6]):
            await channel.send(value=batch)
        for _ in range(100):
            if len(got) == 3 and ticks:
                break
            await asyncio.sleep(0.02)
        await app.stop()

    asyncio.run(main())
    assert got == [[1, 2, 3], [4], [5, 6]] and ticks
