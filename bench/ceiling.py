"""The model ceiling: the model's best rate in this process, no Kafka, on the same passages, in length-sorted
batches cut by the embed stage's own function at each token budget and batch cap of a sweep. The passages are
tokenized before the clock starts, as the stage tokenizes them on its fetch thread while the model is busy: the
ceiling is the model's forward passes alone."""

from __future__ import annotations

import time
from typing import Any

from stages.embed import pass_cost, token_batches
from stages.model import encode, encode_ids, load_model, load_tokenizer, token_ids

# Padded tokens per forward pass and passages per pass to try. The sweep is coordinate-wise: every budget at
# the largest cap, then every cap at the best budget; settings that cut the same batches are measured once.
SWEEP = {
    "cpu": {"budgets": [512, 1024, 2048, 4096, 8192], "caps": [16, 32, 64, 128]},
    "cpu-quick": {"budgets": [1024, 2048, 4096], "caps": [32, 64]},
    "cuda": {"budgets": [4096, 8192, 16384, 32768, 65536], "caps": [128, 256, 512, 1024]},
    "cuda-quick": {"budgets": [8192, 32768, 65536], "caps": [256, 1024]},
}


def stage_ids(texts: list[str], model: str, max_len: int) -> list[list[int]]:
    """Each passage's token ids exactly as the embed stage makes them before cutting batches."""
    return token_ids(load_tokenizer(model), texts, max_len)


def stage_lengths(texts: list[str], model: str, max_len: int) -> list[int]:
    """Each passage's token count exactly as the embed stage computes it before cutting batches."""
    return [len(ids) for ids in stage_ids(texts, model, max_len)]


def _warm_up(st: Any, model: str, max_tokens: int, max_batch: int) -> None:
    """The passes the embed stage runs before it reports ready (EmbedStage._warm_up), for a fair start."""
    for tokens in (16, 64, 128, st.max_seq_length):
        count = max(1, min(max_batch, max_tokens // tokens))
        encode_ids(st, stage_ids(["a " * (tokens - 2)], model, st.max_seq_length) * count)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def cut(lengths: list[int], max_tokens: int, max_batch: int, cost: int, take: int | None = None) -> list[list[int]]:
    """Forward passes as the embed stage cuts them: over all the texts at once, or (`take`) over each run of
    `take` texts in order, as the stage sees them in takes from Kafka (less room to sort, more padding)."""
    size = take or max(len(lengths), 1)
    return [[start + i for i in group] for start in range(0, len(lengths), size)
            for group in token_batches(lengths[start:start + size], max_tokens, max_batch, cost)]


def measure(texts: list[str], model: str, device: str, max_tokens: int, max_batch: int, repeats: int = 1,
            take: int | None = None) -> dict[str, Any]:
    """Passages/s and padded-token fill of one setting: the best of `repeats` timed runs after the warm-up;
    `take`: passes cut within each run of that many texts, as the stage cuts its takes."""
    st = load_model(model, device)
    ids = stage_ids(texts, model, st.max_seq_length)
    lengths = [len(i) for i in ids]
    batches = cut(lengths, max_tokens, max_batch, pass_cost(device.startswith("cuda"), max_tokens), take)
    _warm_up(st, model, max_tokens, max_batch)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        for group in batches:
            encode_ids(st, [ids[i] for i in group])
        _sync(device)
        best = min(best, time.perf_counter() - started)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in batches)
    return {"max_tokens": max_tokens, "max_batch": max_batch, "passages": len(texts), "seconds": best,
            "passages_per_s": len(texts) / best, "tokens_per_s": sum(lengths) / best,
            "batches": len(batches), "padding": 1 - sum(lengths) / padded, "take": take}


def sweep(texts: list[str], model: str, device: str, budgets: list[int], caps: list[int], repeats: int = 2,
          fixed: list[int] | None = None) -> dict[str, Any]:
    """Every budget at the largest cap, then every cap at the best budget, each the best of `repeats` runs;
    the best setting wins. Noise can only raise the best of many, so the ceiling errs high, never low.
    `fixed` batch sizes for `encode` (the old ceiling) are measured in between, so both see the same drift."""
    st = load_model(model, device)
    lengths = stage_lengths(texts, model, st.max_seq_length)
    # The process's first passes are slow whatever their shape (thread pools, allocator): pay for them here,
    # not in the first setting measured.
    measure(texts[:64], model, device, budgets[0], max(caps))
    tried: dict[str, dict[str, Any]] = {}
    pending, by_size = list(fixed or []), {}
    seen: dict[tuple, str] = {}  # the batches a setting cuts -> the setting that was measured for them

    def run(max_tokens: int, max_batch: int) -> None:
        name = f"{max_tokens}/{max_batch}"
        cut = tuple(tuple(g) for g in token_batches(lengths, max_tokens, max_batch,
                                                   pass_cost(device.startswith("cuda"), max_tokens)))
        if name in tried:
            return
        if cut in seen:  # the same forward passes: the same figure
            tried[name] = {**tried[seen[cut]], "max_tokens": max_tokens, "max_batch": max_batch,
                           "same_as": seen[cut]}
            return
        seen[cut] = name
        tried[name] = measure(texts, model, device, max_tokens, max_batch, repeats)
        if pending:
            size = pending.pop(0)
            by_size[size] = fixed_rate(st, texts, size, device, repeats)

    for budget in budgets:
        run(budget, max(caps))
    best_budget = max((tried[f"{b}/{max(caps)}"] for b in budgets), key=lambda r: r["passages_per_s"])["max_tokens"]
    for cap in caps:
        run(best_budget, cap)
    for size in pending:
        by_size[size] = fixed_rate(st, texts, size, device, repeats)
    # Among settings with the same figure (same batches), the smallest one is reported.
    best = max(tried.values(), key=lambda r: (r["passages_per_s"], -r["max_tokens"], -r["max_batch"]))
    found = {"best": best, "passages_per_s": best["passages_per_s"], "tokens_per_s": best["tokens_per_s"],
             "passages": len(texts), "tokens": sum(lengths), "settings": tried, "device": device}
    if by_size:
        size = max(by_size, key=by_size.__getitem__)
        found["fixed"] = {"best_batch_size": size, "passages_per_s": by_size[size], "by_batch_size": by_size}
    return found


def fixed_rate(st: Any, texts: list[str], size: int, device: str, repeats: int = 1) -> float:
    """SentenceTransformer.encode at one fixed batch size (its own length sort within the call): passages/s,
    the best of `repeats` after one untimed pass of the first batch."""
    encode(st, texts[:size], batch_size=size)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        encode(st, texts, batch_size=size)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best
