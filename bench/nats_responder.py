"""The least a NATS embedding service can be, the gateway benchmark's reference: one process that answers each
request on a subject with the model's vector, encoded on a worker thread (as the gateway does), with no batching,
validation, metrics or recording. `python -m bench.nats_responder URL SUBJECT`; it answers until killed."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")


async def serve(url: str, subject: str) -> None:
    import nats

    from stages.model import encode, load_model

    thread = ThreadPoolExecutor(1)
    model = thread.submit(load_model, "all-MiniLM-L6-v2", "cpu").result()  # set up where it runs, as the gateway
    nc = await nats.connect(url)
    loop = asyncio.get_running_loop()

    async def answer(msg) -> None:
        text = json.loads(msg.data)["text"]
        vector = await loop.run_in_executor(thread, lambda: encode(model, [text], batch_size=1)[0].tolist())
        await nc.publish(msg.reply, json.dumps({"vector": vector}).encode())

    await nc.subscribe(subject, cb=answer)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
