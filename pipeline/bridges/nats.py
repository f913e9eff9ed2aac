"""NATS JetStream: a durable pull consumer, fetch(batch), ack after the Kafka flush, progress acks while a flush
takes long, max_deliver from topics.yaml; a subject or JetStream with Nats-Msg-Id for a sink."""

from __future__ import annotations

import asyncio

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from pipeline.bridges.base import Message, Source, log
from pipeline.config import BridgeSource

CONNECT_WAIT_S = 10.0  # a source that finds no server by then exits with a message (after that it reconnects)


async def _log_error(exc: Exception) -> None:
    """nats-py's errors (a refused connection while it retries) as one line each, not its default traceback."""
    log.warning("NATS: %s: %s", type(exc).__name__, exc)


class NatsSource(Source):
    def __init__(self, name: str, spec: BridgeSource) -> None:
        super().__init__(name, spec)
        self.durable = spec.consumer_name(name)

    async def open(self) -> None:
        try:
            self.client = await asyncio.wait_for(nats.connect(self.spec.connect_url(), max_reconnect_attempts=-1,
                                                              error_cb=_log_error), CONNECT_WAIT_S)
        except asyncio.TimeoutError:
            raise ConnectionError(f"no NATS server answered in {CONNECT_WAIT_S:.0f} s") from None
        self.js = self.client.jetstream()
        try:
            await self.js.stream_info(self.spec.stream)
        except NotFoundError:
            await self.js.add_stream(name=self.spec.stream, subjects=[self.spec.subject])
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                                max_deliver=self.spec.max_deliver, ack_wait=self.spec.ack_wait_s,
                                max_ack_pending=max(self.spec.batch * 4, 1000), filter_subject=self.spec.subject)
        self.subscription = await self.js.pull_subscribe(self.spec.subject, durable=self.durable,
                                                         stream=self.spec.stream, config=config)

    async def read(self) -> list[Message]:
        try:
            got = await self.subscription.fetch(self.spec.batch, timeout=self.spec.block_ms / 1000)
        except (NatsTimeout, asyncio.TimeoutError):  # nothing within block_ms (nats-py raises either)
            return []
        return [Message(m.data, str(m.metadata.sequence.stream), m) for m in got]

    async def ack(self, messages: list[Message]) -> None:
        for message in messages:
            await message.handle.ack()
        await self.client.flush()

    async def in_progress(self, messages: list[Message]) -> None:
        for message in messages:
            await message.handle.in_progress()

    async def backlog(self) -> int | None:
        info = await self.subscription.consumer_info()
        return info.num_pending + info.num_ack_pending

    async def close(self) -> None:
        await self.client.close()  # not drain(): a pending pull request would hold it for the drain timeout


class NatsPublisher:
    """Publish to a subject, or to JetStream with Nats-Msg-Id (the record's topic/partition/offset) so that a
    record published again after a crash is stored once within the stream's duplicate window."""

    def __init__(self, url: str, subject: str, jetstream: bool) -> None:
        self.url, self.subject, self.jetstream = url, subject, jetstream
        self.client = None

    async def publish(self, bodies: list[tuple[str, bytes]]) -> None:
        if self.client is None:
            self.client = await nats.connect(self.url, max_reconnect_attempts=-1, error_cb=_log_error)
            self.js = self.client.jetstream()
        if self.jetstream:  # all in flight at once, each future resolved by its PubAck (an error raises)
            acks = [await self.js.publish_async(self.subject, body, headers={"Nats-Msg-Id": id_})
                    for id_, body in bodies]
            await asyncio.gather(*acks)
        else:
            for _, body in bodies:
                await self.client.publish(self.subject, body)
            await self.client.flush()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.drain()
