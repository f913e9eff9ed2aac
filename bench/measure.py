"""Each measurement of the benchmark, returning plain dicts of figures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.harness import Bench
from pipeline.config import Topology
from pipeline.errors import PipelineError
from pipeline.kafka.clients import consumer
from pipeline.kafka.offsets import stage_lag
from pipeline.kafka.sender import Sender
from pipeline.runtime.metrics import quantile, scrape
from pipeline.avro.codecs import codec_for
from pipeline.runtime.routes import call_route
from stages.model import encode, load_model, model_id, to_bytes


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


def stage_alone(bench: Bench, stage: str, records: list[dict[str, Any]], env: dict[str, str] | None = None,
                embed: dict[str, Any] | None = None, prefilled: bool = False,
                batch: dict[str, Any] | None = None, delivery: str | None = None) -> dict[str, Any]:
    """One stage process, warmed by one take of records and idle, then sent `records`: records/s from the
    first send to the last record handled (nothing is fetched ahead of the clock); `delivery` overrides the
    stage's (at-least-once, exactly-once).

    `prefilled`: the records are on the topic before the stage starts, and the clock runs from the first
    batches done (after two takes) to the last: the stage's steady rate with no producer beside it on the cores,
    for parts that compare it with a reference measured in process. `batch` overrides its batch settings."""
    path, topology = bench.topology(f"alone-{stage}", embed=embed, batch=batch, delivery=delivery)
    spec = topology.stages[stage]
    warm = [] if prefilled else _warm_records(records, spec.batch.max_records)
    pairs = bench.encode(topology, spec.input, records)
    if prefilled:
        bench.send(topology, spec.input, pairs)
    bench.start(path, stage, env=env)
    try:
        bench.wait_ready(topology, [stage])
        if prefilled:  # watched closely until the first take is done: the clock starts there
            bench.wait_count(topology, stage, 1, every=0.01)
            before = scrape(call_route(topology, stage, "/metrics"))
            started = before["pipeline_last_batch_timestamp_seconds"]
            records = records[int(before["pipeline_events_in_total"]):]
            if not records:
                raise PipelineError(f"{stage} got through all its records before the clock started: give it more")
        else:
            bench.fill(topology, spec.input, warm)
            bench.wait_count(topology, stage, len(warm))
            before = scrape(call_route(topology, stage, "/metrics"))
            started = time.time()
            bench.send(topology, spec.input, pairs)
        done = bench.wait_count(topology, stage, int(before["pipeline_events_in_total"]) + len(records))
        m = scrape(call_route(topology, stage, "/metrics"))
    finally:
        bench.stop()
    seconds = done - started
    process = m["pipeline_process_seconds_sum"] - before["pipeline_process_seconds_sum"]
    batches = m["pipeline_batch_size_count"] - before["pipeline_batch_size_count"]
    return {"records": len(records), "seconds": seconds, "records_per_s": len(records) / seconds,
            "process_records_per_s": len(records) / process, "mean_batch": len(records) / batches,
            "stage_seconds": process, "warm_records": len(warm), "prefilled": prefilled}


def _warm_records(records: list[dict[str, Any]], take: int) -> list[dict[str, Any]]:
    """One take's worth of the records again, under ids of their own, to warm a process before the clock."""
    return [{**r, "doc_id": f"{r['doc_id']}~warm"} for r in records[:take]]


def bare_faust(bench: Bench, stage: str, records: list[dict[str, Any]], env: dict[str, str] | None = None,
               ack: str = "each", timeout: float = 600) -> dict[str, Any]:
    """A Faust agent with the stage's settings and take size that only takes and acks (bench/bare_faust.py),
    events/s from the first send to the last ack. With ack="last", also where its group committed, against the
    partitions' ends."""
    # Past Faust's commit interval (1 s) before it is stopped, with ack="last".
    topology, result = _marked(bench, "bench.bare_faust", stage, records, ["--ack", ack], env, timeout,
                               linger=2.5 if ack != "each" else 0.0)
    result["ack"] = ack
    if ack != "each":
        bare_topology = topology.model_copy(deep=True)
        bare_topology.stages[stage].group = f"{topology.stages[stage].group}.bare"
        rows = stage_lag(bare_topology, stage)
        result["committed"] = {r.partition: r.committed for r in rows}
        result["end"] = {r.partition: r.end for r in rows}
    return result


def librdkafka_reference(bench: Bench, stage: str, records: list[dict[str, Any]], timeout: float = 600,
                         embed: dict[str, Any] | None = None, prefilled: bool = False) -> dict[str, Any]:
    """A bare confluent-kafka loop with the stage's take size that consumes, decodes, encodes, produces and
    commits (bench/reference.py), events/s from the first send to the commit that got through them; measured
    as stage_alone measures a stage with the same `embed` settings and `prefilled`."""
    return _marked(bench, "bench.reference", stage, records, timeout=timeout, embed=embed, prefilled=prefilled)[1]


def _marked(bench: Bench, module: str, stage: str, records: list[dict[str, Any]], args: list[str] | None = None,
            env: dict[str, str] | None = None, timeout: float = 600, linger: float = 0.0,
            embed: dict[str, Any] | None = None, prefilled: bool = False) -> tuple[Topology, dict[str, Any]]:
    """`python -m MODULE CONFIG STAGE WARM COUNT MARKS ARGS` on the stage's input, measured as stage_alone
    measures the stage: warmed by one take (the process writes MARKS.warm), then sent the records; records/s
    from the first send to the time in MARKS.done. `prefilled`: every record is on the topic before it starts,
    and the clock runs from the time in MARKS.warm (one take done) to MARKS.done. Stopped `linger` seconds
    after that."""
    name = module.rsplit(".", 1)[-1]
    path, topology = bench.topology(f"{name}-{stage}", embed=embed)
    spec = topology.stages[stage]
    warm = _warm_records(records, spec.batch.max_records)
    pairs = bench.encode(topology, spec.input, records)
    bench.fill(topology, spec.input, warm)
    if prefilled:
        bench.send(topology, spec.input, pairs)
    marks = bench.workdir / f"{name}-{stage}-{time.monotonic_ns()}"
    bench.spawn(name, ["-m", module, str(path), stage, str(len(warm)), str(len(records)), str(marks),
                       *(args or [])], env)
    try:
        warmed = _wait_file(bench, marks.with_suffix(".warm"), timeout)
        started = time.time()
        if prefilled:
            started = json.loads(warmed.read_text())["time"]
        else:
            bench.send(topology, spec.input, pairs)
        done = json.loads(_wait_file(bench, marks.with_suffix(".done"), timeout).read_text())
        time.sleep(linger)
    finally:
        bench.stop()  # SIGTERM: the process commits what it may on the way out
    seconds = done["time"] - started
    return topology, {"records": len(records), "seconds": seconds, "records_per_s": len(records) / seconds,
                      "settings": done["settings"]}


def _wait_file(bench: Bench, path: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        bench.check_alive()
        if time.monotonic() > deadline:
            raise PipelineError(f"{path.name} was not written within {timeout:.0f} s")
        time.sleep(0.02)
    return path


def whole_pipeline(bench: Bench, docs: list[dict[str, Any]], passages: int,
                   steady: list[tuple[dict[str, Any], int]], steady_seconds: float,
                   embed: dict[str, Any] | None = None, delivery: str | None = None,
                   steady_rate: float | None = None) -> dict[str, Any]:
    """All four stages: the maximum rate (documents produced at once), then ingest-to-stored latency while
    documents arrive at a steady half of that rate (or at `steady_rate`, to compare runs at the same rate)."""
    path, topology = bench.topology("pipeline", embed=embed, delivery=delivery)
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
        rate = steady_rate or docs_per_s / 2
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
