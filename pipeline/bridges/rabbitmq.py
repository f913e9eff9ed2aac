"""RabbitMQ: a durable queue read with prefetch = batch and acked by hand after the Kafka flush (priorities
honoured through x-max-priority); an exchange with publisher confirms for a sink."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError

from pipeline.bridges.base import Message, Redelivered, Source
from pipeline.config import BridgeSource

LINGER_S = 0.05  # after the first message of a batch, how long to wait for the rest of it


def _live(message: AbstractIncomingMessage) -> bool:
    """False for a delivery on a channel that closed since: the broker took it back and delivers it again."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


def queue_arguments(spec: BridgeSource) -> dict:
    arguments: dict = {"x-max-priority": spec.max_priority} if spec.max_priority else {}
    if spec.dead_letter_exchange is not None:
        arguments["x-dead-letter-exchange"] = spec.dead_letter_exchange
    return arguments


class RabbitSource(Source):
    def __init__(self, name: str, spec: BridgeSource) -> None:
        super().__init__(name, spec)
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def open(self) -> None:
        self.connection = await aio_pika.connect_robust(self.spec.connect_url())
        self.channel = await self.connection.channel()
        # The broker hands out at most a batch of unacked messages; with a backlog, highest priority first.
        await self.channel.set_qos(prefetch_count=self.spec.batch)
        self.queue = await self.channel.declare_queue(self.spec.queue, durable=True,
                                                      arguments=queue_arguments(self.spec))
        await self.queue.consume(self.inbox.put, no_ack=False)

    async def read(self) -> list[Message]:
        if not self.connection.connected.is_set():  # the robust connection reconnects meanwhile
            raise ConnectionError("not connected to RabbitMQ (reconnecting)")
        try:
            first = await asyncio.wait_for(self.inbox.get(), self.spec.block_ms / 1000)
        except asyncio.TimeoutError:
            return []
        got = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        while len(got) < self.spec.batch:
            try:
                got.append(await asyncio.wait_for(self.inbox.get(), max(deadline - loop.time(), 0)))
            except asyncio.TimeoutError:
                break
        return [Message(m.body, m.message_id or str(m.delivery_tag), m) for m in got if _live(m)]

    async def ack(self, messages: list[Message]) -> None:
        # One ack for the batch: it holds the channel's oldest unacked deliveries (read in order, acked before the
        # next read), so `multiple` up to its last delivery tag acks exactly these.
        last = max(messages, key=lambda m: m.handle.delivery_tag)
        try:
            await last.handle.ack(multiple=True)
        except ChannelInvalidStateError as exc:
            raise Redelivered("their channel closed") from exc

    async def give_up(self, messages: list[Message]) -> bool:
        if self.spec.dead_letter_exchange is None:
            return False
        for message in messages:  # the broker routes each to the queue's dead-letter exchange
            await message.handle.nack(requeue=False)
        return True

    async def backlog(self) -> int | None:
        # On the channel underneath: the robust channel answers a passive declare of a queue it knows from its cache
        # (the count when the queue was declared), not from the broker.
        channel = await self.channel.get_underlay_channel()
        declared = await channel.queue_declare(self.spec.queue, passive=True)
        return declared.message_count

    async def close(self) -> None:
        await self.connection.close()


class RabbitPublisher:
    """Publish to an exchange on a channel with publisher confirms: `publish` returns once the broker has them."""

    def __init__(self, url: str, exchange: str, routing_key: str) -> None:
        self.url, self.exchange_name, self.routing_key = url, exchange, routing_key
        self.connection = None

    async def _open(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = (self.channel.default_exchange if not self.exchange_name
                         else await self.channel.get_exchange(self.exchange_name))

    async def publish(self, bodies: list[tuple[str, bytes]]) -> None:
        if self.connection is None:
            await self._open()
        confirms = [self.exchange.publish(aio_pika.Message(body, message_id=id_,
                                                           delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                          routing_key=self.routing_key) for id_, body in bodies]
        await asyncio.gather(*confirms)  # each resolves on the broker's ack; a nack raises

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
