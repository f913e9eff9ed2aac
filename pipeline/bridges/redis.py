"""Redis Streams: XREADGROUP in a consumer group, XACK after the Kafka flush, XAUTOCLAIM of a dead bridge's
entries; XADD with MAXLEN ~ for a sink."""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from pipeline.bridges.base import Message, Source
from pipeline.config import BridgeSource

BODY_FIELD = b"body"  # an entry's body; an entry without it is its fields as one JSON object


def _body(fields: dict[bytes, bytes]) -> bytes:
    if BODY_FIELD in fields:
        return fields[BODY_FIELD]
    return json.dumps({k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}).encode()


class RedisSource(Source):
    def __init__(self, name: str, spec: BridgeSource) -> None:
        super().__init__(name, spec)
        self.stream = spec.stream
        self.group = spec.group_name(name)
        self.consumer = spec.consumer_name(name)
        # After a restart, first the entries this consumer read and never acked, after this id (a cursor: the
        # batch read ahead must not be these again).
        self._own_pending: bytes | str | None = "0"
        self._next_claim = 0.0

    async def open(self) -> None:
        self.client = aioredis.from_url(self.spec.connect_url())
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _messages(self, entries: list) -> list[Message]:
        return [Message(_body(fields or {}), id_.decode(), id_) for id_, fields in entries]

    async def read(self) -> list[Message]:
        count = self.spec.batch
        if time.monotonic() >= self._next_claim:
            # Entries another consumer (a dead bridge) read and has not acked for claim_idle_ms become ours.
            _, claimed, *_ = await self.client.xautoclaim(self.stream, self.group, self.consumer,
                                                          self.spec.claim_idle_ms, "0-0", count=count)
            if claimed:
                return self._messages(claimed)
            self._next_claim = time.monotonic() + min(self.spec.claim_idle_ms / 2000, 5)
        if self._own_pending is not None:
            found = await self.client.xreadgroup(self.group, self.consumer, {self.stream: self._own_pending},
                                                 count=count)
            entries = found[0][1] if found else []
            if entries:
                self._own_pending = entries[-1][0]
                return self._messages(entries)
            self._own_pending = None
        found = await self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count,
                                             block=self.spec.block_ms)
        return self._messages(found[0][1]) if found else []

    async def ack(self, messages: list[Message]) -> None:
        await self.client.xack(self.stream, self.group, *[m.handle for m in messages])

    async def backlog(self) -> int | None:
        for group in await self.client.xinfo_groups(self.stream):
            if group["name"].decode() == self.group:
                return int(group.get("pending") or 0) + int(group.get("lag") or 0)
        return None

    async def close(self) -> None:
        await self.client.aclose()


class RedisPublisher:
    """XADD each record as the entry's `body` field, trimming the stream to about maxlen entries."""

    def __init__(self, url: str, stream: str, maxlen: int) -> None:
        self.client = aioredis.from_url(url)
        self.stream, self.maxlen = stream, maxlen

    async def publish(self, bodies: list[tuple[str, bytes]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for _, body in bodies:
                pipe.xadd(self.stream, {BODY_FIELD: body}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()
