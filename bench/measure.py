"""Each measurement of the benchmark, returning plain dicts of figures."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import Bench
from pipeline.kafka.clients import consumer
from pipeline.kafka.sender import Sender
from pipeline.runtime.metrics import quantile, scrape
from pipeline.avro.codecs import codec_for
from pipeline.runtime.routes import call_route
from stages.model import encode, load_model, load_tokenizer, model_id, to_bytes


def token_counts(texts: list[str], model: str) -> list[int]:
    """Word pieces per text as the model sees it: with [CLS]/[SEP], cut at its 256-token limit."""
    return [min(len(e.ids), 256) for e in load_tokenizer(model).encode_batch(texts)]


def model_ceiling(texts: list[str], model: str, device: str, batch_sizes: list[int], repeats: int = 1
                  ) -> dict[str, Any]:
    """SentenceTransformer.encode alone, no Kafka: passages/s and tokens/s at each batch size, and the best."""
    st = load_model(model, device)
    encode(st, texts[:16], batch_size=16)  # warm-up: first-call allocations and kernel selection
    tokens = sum(token_counts(texts, model))
    per_size = {}
    for size in batch_sizes:
        best = min(_timed(lambda: encode(st, texts, batch_size=size)) for _ in range(repeats))
        per_size[size] = {"passages_per_s": len(texts) / best, "tokens_per_s": tokens / best}
    size = max(per_size, key=lambda s: per_size[s]["passages_per_s"])
    return {"passages": len(texts), "tokens": tokens, "best_batch_size": size, **per_size[size],
            "by_batch_size": per_size}


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def naive_baseline(bench: Bench, passages: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """What a user writes by hand: one consumer loop, encode one message at a time, produce it."""
    _, topology = bench.topology("naive", partitions=1)
    spec = topology.stages["embed"]
    bench.fill(topology, spec.input, passages)
    st = load_model(model, bench.device)
    encode(st, ["warm up"], batch_size=1)
    decode, out = codec_for(topology, spec.input), codec_for(topology, spec.output)
    source, sink = consumer(topology, spec.group), Sender(topology)
    source.subscribe([spec.input])
    mid = model_id(model)
    done, started = 0, None
    try:
        while done < len(passages):
            msg = source.poll(1.0)
            if msg is None or msg.error():
                continue
            started = started or time.perf_counter()
            record = decode.decode(msg.value())
            vector = encode(st, [record["text"]], batch_size=1)[0]
            record.update(model_id=mid, dim=int(vector.shape[0]), vector=to_bytes(vector))
            sink.send(spec.output, out.encode(record, validate=False), msg.key())
            done += 1
        sink.flush(30)
        seconds = time.perf_counter() - started
    finally:
        source.close()
    return {"passages": done, "seconds": seconds, "passages_per_s": done / seconds}


def stage_alone(bench: Bench, stage: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """One stage process on a topic filled beforehand: records/s from ready to the last record handled."""
    path, topology = bench.topology(f"alone-{stage}")
    bench.fill(topology, topology.stages[stage].input, records)
    bench.start(path, stage)
    try:
        ready = bench.wait_ready(topology, [stage])
        done = bench.wait_count(topology, stage, len(records))
        m = scrape(call_route(topology, stage, "/metrics"))
    finally:
        bench.stop()
    seconds = done - ready
    return {"records": len(records), "seconds": seconds, "records_per_s": len(records) / seconds,
            "busy_records_per_s": len(records) / m["pipeline_batch_seconds_sum"],
            "mean_batch": m["pipeline_batch_size_sum"] / m["pipeline_batch_size_count"],
            "stage_seconds": m["pipeline_process_seconds_sum"]}


def whole_pipeline(bench: Bench, docs: list[dict[str, Any]], passages: int,
                   steady: list[tuple[dict[str, Any], int]], steady_seconds: float) -> dict[str, Any]:
    """All four stages: the maximum rate (documents produced at once), then ingest-to-stored latency while
    documents arrive at a steady half of that rate."""
    path, topology = bench.topology("pipeline")
    stages = list(topology.stages)
    for name in stages:
        bench.start(path, name)
    try:
        bench.wait_ready(topology, stages)
        raw_topic = topology.stages["preprocess"].input
        cpu_before = bench.cpu_seconds()
        started = time.time()
        bench.fill(topology, raw_topic, docs)
        done = bench.wait_count(topology, "store", passages)
        seconds = done - started
        cpu = {name: used - cpu_before.get(name, 0.0) for name, used in bench.cpu_seconds().items()}
        docs_per_s = len(docs) / seconds
        before = _latency_buckets(topology)
        rate = docs_per_s / 2
        sent_passages = _steady(bench, topology, raw_topic, steady, rate, steady_seconds)
        bench.wait_count(topology, "store", passages + sent_passages)
        after = _latency_buckets(topology)
    finally:
        bench.stop()
    window = [(le, after[le] - before.get(le, 0.0)) for le in after]
    return {"documents": len(docs), "passages": passages, "seconds": seconds, "documents_per_s": docs_per_s,
            "passages_per_s": passages / seconds, "steady_documents_per_s": rate,
            "steady_seconds": steady_seconds, "latency_p50_s": quantile(window, 0.5),
            "latency_p99_s": quantile(window, 0.99), "latency_samples": window[-1][1] if window else 0,
            "cpu_seconds": cpu}


def _latency_buckets(topology: Any) -> dict[float, float]:
    m = scrape(call_route(topology, "store", "/metrics"))
    prefix = "pipeline_ingest_to_now_seconds_bucket{"
    return {float(k[len(prefix):-1]): v for k, v in m.items() if k.startswith(prefix)}


def _steady(bench: Bench, topology: Any, topic: str, docs: list[tuple[dict[str, Any], int]], rate: float,
            seconds: float) -> int:
    """Produce documents in order at `rate` per second for `seconds`; the passages they will make."""
    codec, sender = codec_for(topology, topic), Sender(topology)
    started = time.monotonic()
    passages = 0
    for i, (doc, count) in enumerate(docs):
        due = started + i / rate
        if due - started > seconds:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        sender.send(topic, codec.encode(doc, validate=False), doc["doc_id"].encode())
        passages += count
    sender.flush(30)
    return passages
