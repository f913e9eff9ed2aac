"""Seeded benchmark texts: documents drawn from the bundled sample, and the passages preprocess makes of them."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from pipeline.config import Topology
from pipeline.runtime.stage import Incoming, Reject, load_stage

SAMPLE = Path(__file__).resolve().parents[1] / "stages" / "data" / "sample.jsonl"


def documents(n: int, seed: int, tag: str = "doc") -> list[dict[str, Any]]:
    """`n` documents of one to three sample docstrings each: short, medium and long ones, as real traffic."""
    sample = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        parts = rng.sample(sample, rng.choice((1, 1, 1, 2, 3)))
        docs.append({"doc_id": f"{tag}-{seed}-{i}", "title": parts[0].get("title"), "source": "bench",
                     "text": "\n\n".join(p["text"] for p in parts), "metadata": {}})
    return docs


def passages(topology: Topology, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the preprocess stage makes of `docs`, computed in this process."""
    stage = load_stage(topology, "preprocess")
    stage.setup()
    now = int(time.time() * 1000)
    items = [Incoming(d, d["doc_id"].encode(), stage.spec.input, 0, i, now) for i, d in enumerate(docs)]
    out: list[dict[str, Any]] = []
    for result in stage.process(items):
        if isinstance(result, Reject):
            raise ValueError(f"a benchmark document was rejected: {result.reason}")
        out += result
    return out


def cycle(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` records taken round-robin from `records`, each under a fresh doc id (doc_id~round)."""
    return [{**records[i % len(records)], "doc_id": f"{records[i % len(records)]['doc_id']}~{i // len(records)}"}
            for i in range(n)]
