"""NATS JetStream: a durable pull consumer read with pull requests of a batch, acked after the Kafka flush,
progress acks while a flush takes long, max_deliver from topics.yaml; a subject or JetStream with Nats-Msg-Id for a
sink."""

from __future__ import annotations

import asyncio
import json

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, Header, StatusCode
from nats.js.errors import NotFoundError

from pipeline.bridges.base import Message, Source, log
from pipeline.config import BridgeSource
from pipeline.errors import PipelineError

LINGER_S = 0.05  # after the first message of a waiting pull, how long to wait for the rest of the batch
ANSWER_S = 5.0  # a pull request for what is there now is answered within this (else: the server is away)
CONNECT_WAIT_S = 10.0  # a source that finds no server by then exits with a message (after that it reconnects)


async def _log_error(exc: Exception) -> None:
    """nats-py's errors (a refused connection while it retries) as one line each, not its default traceback."""
    log.warning("NATS: %s: %s", type(exc).__name__, exc)


class NatsSource(Source):
    """Pull requests on JetStream's wire API ($JS.API.CONSUMER.MSG.NEXT) answered into one subscription whose
    callback collects the messages: nats-py's `fetch` awaits each message with a task and a timer of its own
    (reading and acking alone: 4-7k messages/s with it, 26-32k/s this way, on the 2-core test machine)."""

    def __init__(self, name: str, spec: BridgeSource) -> None:
        super().__init__(name, spec)
        self.durable = spec.consumer_name(name)
        self.arrived: list[Msg] = []  # delivered to us, not yet read
        self.answered = asyncio.Event()  # the current pull request is done (or the batch is full)
        self.woken = asyncio.Event()  # a message arrived, or the current pull request is done
        self.refused: str | None = None  # the status that ended it, when that is an error
        self.pulls = 0

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
        # Creates the durable consumer when missing; its own fetch is not used (see the class).
        self.subscription = await self.js.pull_subscribe(self.spec.subject, durable=self.durable,
                                                         stream=self.spec.stream, config=config)
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.spec.stream}.{self.durable}"
        self.inbox = self.client.new_inbox()
        await self.client.subscribe(f"{self.inbox}.*", cb=self._arrived)

    async def _arrived(self, msg: Msg) -> None:
        status = msg.headers.get(Header.STATUS) if msg.headers else None
        if status is None:  # a message: ours to ack, whichever pull request it answers
            self.arrived.append(msg)
            self.woken.set()
            if len(self.arrived) >= self.spec.batch:
                self.answered.set()
        elif msg.subject == f"{self.inbox}.{self.pulls}" and status != StatusCode.CONTROL_MESSAGE:
            # 404 nothing there, 408 expired, 409 a conflict (consumer deleted, ...), 503 no stream/consumer
            if status not in (StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT):
                description = (msg.headers.get(Header.DESCRIPTION) or "").splitlines()
                self.refused = f"status {status}" + (f" ({description[0].strip()})" if description else "")
            self.answered.set()
            self.woken.set()

    async def _pull(self, batch: int, wait_s: float | None) -> None:
        """Ask for up to `batch` messages: those there now (wait_s None), or waiting up to wait_s for them."""
        self.pulls += 1
        self.answered.clear()
        self.woken.clear()
        self.refused = None
        request = {"batch": batch, "no_wait": True} if wait_s is None else {"batch": batch,
                                                                               "expires": int(wait_s * 1e9)}
        await self.client.publish(self.next_subject, json.dumps(request).encode(), reply=f"{self.inbox}.{self.pulls}")

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def read(self) -> list[Message]:
        if not self.client.is_connected:  # a pull would only time out, as if the stream were empty
            raise ConnectionError("not connected to NATS (reconnecting)")
        batch = self.spec.batch
        if len(self.arrived) < batch:
            await self._pull(batch - len(self.arrived), None)
            await self._wait(self.answered, ANSWER_S)
            if self.refused and not self.arrived:
                raise PipelineError(f"JetStream refused a pull from consumer {self.durable} of stream "
                                    f"{self.spec.stream}: {self.refused} (503: no such stream or consumer)")
        if not self.arrived:  # nothing there: wait up to block_ms for the first, then LINGER_S for the rest
            await self._pull(batch, self.spec.block_ms / 1000)
            await self._wait(self.woken, self.spec.block_ms / 1000)
            if self.arrived:
                await self._wait(self.answered, LINGER_S)
        got, self.arrived = self.arrived[:batch], self.arrived[batch:]
        return [Message(m.data, str(m.metadata.sequence.stream), m) for m in got]

    async def ack(self, messages: list[Message]) -> None:
        for message in messages:
            await message.handle.ack()
        await self.client.flush()

    async def in_progress(self, messages: list[Message]) -> None:
        for message in messages:
            await message.handle.in_progress()
        for msg in self.arrived:  # delivered by a pull that outlived its read: held too
            await msg.in_progress()

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
