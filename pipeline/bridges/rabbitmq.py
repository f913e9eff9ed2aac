"""RabbitMQ: a durable queue read with prefetch = two batches and acked by hand after the Kafka flush
(priorities honoured through x-max-priority); an exchange with publisher confirms for a sink."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic

from pipeline.bridges.base import Message, Redelivered, Source
from pipeline.config import BridgeSource

log = logging.getLogger("pipeline.bridge")

PERSISTENT = 2  # AMQP delivery mode: written to disk
LINGER_S = 0.05  # after the first message of a batch, how long to wait for the rest of it


def queue_arguments(spec: BridgeSource) -> dict:
    arguments: dict = {"x-max-priority": spec.max_priority} if spec.max_priority else {}
    if spec.dead_letter_exchange is not None:
        arguments["x-dead-letter-exchange"] = spec.dead_letter_exchange
    return arguments


class RabbitSource(Source):
    def __init__(self, name: str, spec: BridgeSource) -> None:
        super().__init__(name, spec)
        self.inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

    async def open(self) -> None:
        self.connection = await aio_pika.connect_robust(self.spec.connect_url())
        self.channel = await self.connection.channel()
        # The broker hands out at most two batches of unacked messages (the one in delivery and the one read
        # ahead, see SourceBridge.run); with a backlog, highest priority first.
        await self.channel.set_qos(prefetch_count=2 * self.spec.batch)
        self.queue = await self.channel.declare_queue(self.spec.queue, durable=True,
                                                      arguments=queue_arguments(self.spec))
        self.channel.reopen_callbacks.add(self._consume)  # after a reconnection: qos and queue restored
        await self._consume()

    async def _consume(self, *_: Any) -> None:
        """Consume on aio-pika's underlying aiormq channel: aio-pika's own consumer builds an IncomingMessage and
        two tasks per message (a fifth of this source's time); hence the reconnection hook above."""
        channel = await self.channel.get_underlay_channel()
        channel.on_consumer_cancel_callbacks.add(self._cancelled)
        await channel.basic_consume(self.queue.name, self._delivered, no_ack=False)

    async def _delivered(self, message: DeliveredMessage) -> None:
        self.inbox.put_nowait(message)

    async def _cancelled(self, frame: Any) -> None:
        # The broker cancelled the consumer (the queue was deleted): consume again; on a missing queue that
        # closes the channel, and the reconnection declares the queue and comes back here.
        log.warning("%s: RabbitMQ cancelled the consumer of queue %s; consuming again", self.name, self.spec.queue)
        try:
            await self._consume()
        except Exception as exc:
            log.warning("%s: consuming %s again failed (%s); the reconnection retries", self.name,
                        self.spec.queue, exc)

    async def read(self) -> list[Message]:
        if not self.connection.connected.is_set():  # the robust connection reconnects meanwhile
            raise ConnectionError("not connected to RabbitMQ (reconnecting)")
        got: list[DeliveredMessage] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.block_ms / 1000  # for the first message; then LINGER_S for the rest
        while len(got) < self.spec.batch:
            if self.inbox.empty():
                try:
                    message = await asyncio.wait_for(self.inbox.get(), max(deadline - loop.time(), 0))
                except asyncio.TimeoutError:
                    break
            else:  # what has arrived, without a timer per message
                message = self.inbox.get_nowait()
            if message.channel.is_closed:  # a reconnection: the broker requeued it, it comes again
                continue
            if not got:
                deadline = loop.time() + LINGER_S
            got.append(message)
        return [Message(m.body, m.header.properties.message_id or str(m.delivery.delivery_tag), m) for m in got]

    async def ack(self, messages: list[Message]) -> None:
        # One ack per channel for the batch: it holds the channel's oldest unacked deliveries (batches are read in
        # delivery order and acked in the order read), so `multiple` up to its last delivery tag acks exactly
        # these. A channel closed since (a reconnection) has had its deliveries requeued: nothing to ack there.
        last: dict[int, DeliveredMessage] = {}
        for message in messages:
            last[id(message.handle.channel)] = message.handle
        requeued = 0
        for handle in last.values():
            try:
                if handle.channel.is_closed:
                    raise ChannelInvalidStateError("closed")
                await handle.channel.basic_ack(handle.delivery.delivery_tag, multiple=True)
            except ChannelInvalidStateError:
                requeued += 1
        if requeued:
            raise Redelivered(f"{requeued} of their channels closed")

    async def give_up(self, messages: list[Message]) -> bool:
        if self.spec.dead_letter_exchange is None:
            return False
        for message in messages:  # the broker routes each to the queue's dead-letter exchange
            handle = message.handle
            await handle.channel.basic_nack(handle.delivery.delivery_tag, multiple=False, requeue=False)
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
        if self.exchange_name:
            await self.channel.get_exchange(self.exchange_name)  # it must exist: a clear error now if not

    async def publish(self, bodies: list[tuple[str, bytes]]) -> None:
        if self.connection is None:
            await self._open()
        # On aiormq's channel with wait=False: aio-pika's publish waits for each message's frames to be written
        # (one socket write each, under the channel's lock); the broker's confirm is awaited all the same.
        channel = await self.channel.get_underlay_channel()
        confirms = [channel.basic_publish(body, exchange=self.exchange_name, routing_key=self.routing_key,
                                          properties=Basic.Properties(message_id=id_, delivery_mode=PERSISTENT),
                                          wait=False) for id_, body in bodies]
        await asyncio.gather(*confirms)  # each resolves on the broker's ack; a nack raises DeliveryError

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
