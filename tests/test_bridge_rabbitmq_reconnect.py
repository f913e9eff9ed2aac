"""The RabbitMQ source consumes on aiormq's channel under aio-pika's robust one: after the connection drops (a
TCP proxy cuts it) it must consume again, skip acking what the dead channel delivered, and lose nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlsplit

import aio_pika
import pytest

from pipeline.bridges.base import Redelivered
from pipeline.bridges.rabbitmq import RabbitSource
from pipeline.config import BridgeSource

N = 30


class CuttableProxy:
    """A TCP proxy on a free loopback port to one target; `cut()` drops every connection it carries."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


async def _publish(url: str, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    for body in bodies:
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
    await connection.close()


async def _ready(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    declared = await (await connection.channel()).declare_queue(queue, passive=True)
    await connection.close()
    return declared.declaration_result.message_count


def test_rabbitmq_source_consumes_again_after_its_connection_drops(amqp_url: str):
    target = urlsplit(amqp_url)
    queue = f"reconnect-{uuid.uuid4().hex[:8]}"
    ids = [f"r-{i:02d}" for i in range(N)]

    async def scenario() -> tuple[list[str], list[str], int]:
        proxy = CuttableProxy(target.hostname, target.port)
        port = await proxy.start()
        spec = BridgeSource(kind="rabbitmq", url=f"amqp://guest:guest@127.0.0.1:{port}/?reconnect_interval=0.5",
                            queue=queue, batch=10, block_ms=300, dead_letter="unused")
        source = RabbitSource("rabbitmq", spec)
        await source.open()
        await _publish(amqp_url, queue, [json.dumps({"doc_id": i}).encode() for i in ids])
        first = await source.read()
        await source.ack(first)
        in_hand = await source.read()  # read, not acked, when the connection drops: the broker requeues it
        proxy.cut()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not in_hand[0].handle.channel.is_closed and loop.time() < deadline:
            await asyncio.sleep(0.05)
        with pytest.raises(Redelivered):  # its channel is gone: nothing to ack; the bridge does not retry it
            await source.ack(in_hand)
        done = {json.loads(m.body)["doc_id"] for m in first}
        seen, deadline = [], loop.time() + 30
        while set(seen) | done != set(ids) and loop.time() < deadline:
            try:
                batch = await source.read()
            except ConnectionError:  # still reconnecting: the bridge's loop retries the same way
                await asyncio.sleep(0.1)
                continue
            if batch:
                await source.ack(batch)
                seen += [json.loads(m.body)["doc_id"] for m in batch]
        await source.close()
        proxy.close()
        return done, [json.loads(m.body)["doc_id"] for m in in_hand], seen, await _ready(amqp_url, queue)

    done, in_hand, seen, left = asyncio.run(scenario())
    assert len(done) == len(in_hand) == 10 and set(in_hand) <= set(seen)  # delivered again after the reconnection
    assert done | set(seen) == set(ids) and left == 0 and sorted(seen) == sorted(set(seen))
