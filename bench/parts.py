"""The benchmark's own parts: the model ceiling (and fixed batches), the naive loop, the embed stage, the light
stages against a bare librdkafka loop (and a bare Faust agent), and the whole pipeline. Each registers how it
measures and its rows."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench import ceiling, corpus, measure
from bench.context import Context
from bench.rows import Row, part
from pipeline.runtime.stage import Incoming, load_stage
from stages.model import encode, load_model, model_id, to_bytes
from stages.simulated import SimulatedAccelerator

TARGETS = {  # ratio -> minimum, by device
    "cpu": {"embed": 0.9, "pipeline": 0.8, "naive": 1.2, "light": 0.6},
    "cuda": {"embed": 0.9, "pipeline": 0.8, "naive": 20.0, "light": 0.6},
}
CUDA_PASSAGES_PER_S = 10_000  # MiniLM-L6 on an H100, the sample's passage lengths
LIGHT_STAGE_PER_S = 5_000  # the old absolute target of each light stage, shown beside its ratio
LATENCY_LIMIT_S = 2.0
SIM_TARGET = 0.8  # the embed stage with the simulated accelerator ÷ the stand-in's own rate
DEFAULT_SETTING = {"cpu": (2048, 64), "cuda": (32768, 512)}  # the embed stage's defaults (stages/embed.py)


def _targets(results: dict[str, Any]) -> dict[str, float]:
    return TARGETS["cuda" if results["meta"]["device"].startswith("cuda") else "cpu"]


def _sample(ctx: Context) -> list[str]:
    """The passages of the ceiling sweep: all of the run's on a GPU or in --quick, else the first 300."""
    return ctx.texts if ctx.quick or ctx.device != "cpu" else ctx.texts[:300]


def _setting(ctx: Context) -> dict[str, int]:
    """The embed stage's token budget and batch cap for this run: the sweep's winner when it ran."""
    if best := ctx.results.get("ceiling", {}).get("best"):
        return {"max_tokens": best["max_tokens"], "max_batch": best["max_batch"]}
    tokens, batch = DEFAULT_SETTING["cuda" if ctx.device != "cpu" else "cpu"]
    return {"max_tokens": tokens, "max_batch": batch}


def _nearby(ctx: Context, texts: list[str]) -> dict[str, Any]:
    """The ceiling at the stage's setting, its passes cut within takes of the stage's size (as bench.harness
    sets it: topics.yaml's, grown to the batch cap), as the stage cuts them."""
    s = _setting(ctx)
    take = max(ctx.topology.stages["embed"].batch.max_records, s["max_batch"])
    return ceiling.measure(texts, ctx.model, ctx.device, s["max_tokens"], s["max_batch"], take=take)


def _ceiling_rows(results: dict[str, Any]) -> list[Row]:
    c = results["ceiling"]
    b = c["best"]
    rows = [Row("ceiling", "model ceiling (in process, no Kafka; best of the sweep)", c["passages_per_s"],
                "passages/s", note=f"{b['max_tokens']:,} tokens × ≤{b['max_batch']} per pass, "
                f"{c['tokens_per_s']:,.0f} tokens/s, {len(c['settings'])} settings, {c['passages']} passages")]
    if f := c.get("fixed"):
        rows.append(Row("ceiling", f"encode at a fixed batch size (best: {f['best_batch_size']})",
                        f["passages_per_s"], "passages/s", "model ceiling", c["passages_per_s"],
                        note="the old ceiling, measured between the sweep's settings; "
                        + ", ".join(f"{s}: {v:,.1f}" for s, v in f["by_batch_size"].items())))
    return rows


@part("ceiling", "The model's best rate in process: token budgets × batch caps, length-sorted as the embed stage "
      "cuts its passes; and encode at fixed batch sizes in between.", rows=_ceiling_rows, broker=False)
def run_ceiling(ctx: Context) -> dict[str, Any]:
    key = ("cuda" if ctx.device != "cpu" else "cpu") + ("-quick" if ctx.quick else "")
    fixed = ([8, 32] if ctx.quick else [4, 8, 16, 32, 64]) if ctx.device == "cpu" else [64, 128, 256, 512, 1024]
    return ceiling.sweep(_sample(ctx), ctx.model, ctx.device, **ceiling.SWEEP[key], fixed=fixed)


def _naive_rows(results: dict[str, Any]) -> list[Row]:
    n = results["naive"]
    return [Row("naive", "naive loop (one consumer, one message at a time)", n["passages_per_s"], "passages/s",
                "model ceiling", results.get("ceiling", {}).get("passages_per_s"))]


@part("naive", "What a user writes by hand: one consumer loop, one message at a time.", rows=_naive_rows)
def run_naive(ctx: Context) -> dict[str, Any]:
    return measure.naive_baseline(ctx.bench, ctx.passages[:60 if ctx.quick else 300], ctx.model)


def _embed_rows(results: dict[str, Any]) -> list[Row]:
    e = results["embed"]
    rows = [Row("embed", "embed stage alone, through the broker", e["records_per_s"], "passages/s",
                "ceiling beside it", e["ceiling"]["passages_per_s"], _targets(results)["embed"],
                note=f"{e['setting']['max_tokens']:,} tokens × ≤{e['setting']['max_batch']}; "
                f"mean take {e['mean_batch']:.0f}")]
    if results["meta"]["device"].startswith("cuda"):
        rows.append(Row("embed", "embed stage alone, against the H100 target", e["records_per_s"], "passages/s",
                        "10,000 passages/s", CUDA_PASSAGES_PER_S, 1.0))
    return rows


@part("embed", "The embed stage alone through the broker, at the sweep's winning setting, against the ceiling "
      "measured just before it on the same passages.", rows=_embed_rows)
def run_embed(ctx: Context) -> dict[str, Any]:
    nearby = _nearby(ctx, ctx.texts)
    setting = _setting(ctx)
    return {**measure.stage_alone(ctx.bench, "embed", ctx.passages, embed=setting), "setting": setting,
            "ceiling": nearby}


def _inprocess_rows(results: dict[str, Any]) -> list[Row]:
    e = results["embed-inprocess"]
    return [Row("embed-inprocess", "embed stage's batch path in process (BatchHandler, no Kafka)",
                e["records_per_s"], "passages/s", "ceiling beside it", e["ceiling"]["passages_per_s"],
                _targets(results)["embed"], note="fallback where no broker can run; includes Avro both ways")]


@part("embed-inprocess", "Where no broker can run: the embed stage's batch path (decode, process, encode) through "
      "pipeline.testing.run_stage, against the ceiling beside it.", rows=_inprocess_rows, broker=False,
      default=False)
def run_embed_inprocess(ctx: Context) -> dict[str, Any]:
    from pipeline.testing import run_stage

    setting = _setting(ctx)
    nearby = _nearby(ctx, ctx.texts)
    topology = ctx.topology.model_copy(deep=True)
    spec = topology.stages["embed"]
    spec.options = {**spec.options, **setting, "device": ctx.device}
    spec.batch.max_records = max(spec.batch.max_records, setting["max_batch"])
    stage = load_stage(topology, "embed")
    stage.setup()
    started = time.perf_counter()
    out = run_stage(stage, ctx.passages)
    seconds = time.perf_counter() - started
    if len(out.outputs) != len(ctx.passages):
        raise RuntimeError(f"the embed stage gave {len(out.outputs)} vectors for {len(ctx.passages)} passages")
    return {"records": len(ctx.passages), "seconds": seconds, "records_per_s": len(ctx.passages) / seconds,
            "setting": setting, "ceiling": nearby}


SIM_SETTING = {"device": "sim", "max_tokens": 32768, "max_batch": 512}  # the embed stage's CUDA defaults


def _sim_rows(results: dict[str, Any]) -> list[Row]:
    s = results["sim"]
    rows = [Row("sim", "simulated accelerator in process (no Kafka; SIMULATION)", s["standin"]["passages_per_s"],
                "passages/s", note=f"{s['standin']['passes']} passes of ≤32,768 padded tokens in takes of 512; "
                "a calibrated sleep, not a GPU"),
            Row("sim", "embed stage with the simulated accelerator (SIMULATION)", s["records_per_s"], "passages/s",
                "the stand-in beside it", s["standin"]["passages_per_s"], SIM_TARGET,
                note=f"{s['records']:,} passages; mean take {s['mean_batch']:.0f}; the model busy "
                f"{s['stage_seconds'] / s['seconds']:.0%} of the time")]
    if "reference" in s:
        rows += [Row("sim", "tokenizer alone on these passages (in process, both cores)", s["tokenizer_per_s"],
                     "passages/s", note="what embed would spend without the ids preprocess carries"),
                 Row("sim", "librdkafka reference on embed's input, takes of 512", s["reference"]["records_per_s"],
                     "passages/s", note="consume, decode, encode, produce, commit: no tokenizer, no model"),
                 Row("sim", "embed stage with the simulated accelerator, against the skeleton", s["records_per_s"],
                     "passages/s", "librdkafka reference beside it", s["reference"]["records_per_s"])]
    return rows


@part("sim", "The embed stage with a simulated accelerator (device: sim, a calibrated sleep per padded token with "
      "the GIL released) against the stand-in's own rate: the runtime's ceiling under a fast model; beside it the "
      "tokenizer alone and the librdkafka skeleton on the same passages, which bound any stage on these cores.",
      rows=_sim_rows)
def run_sim(ctx: Context) -> dict[str, Any]:
    records = corpus.cycle(ctx.passages, ctx.stage_records)
    texts = [r["text"] for r in records]
    standin = simulated_rate(texts, ctx.model, SIM_SETTING["max_batch"])
    started = time.perf_counter()
    ceiling.stage_ids(texts, ctx.model, 256)
    tokenizer = len(texts) / (time.perf_counter() - started)
    reference = measure.librdkafka_reference(ctx.bench, "embed", records, embed=SIM_SETTING, prefilled=True)
    alone = measure.stage_alone(ctx.bench, "embed", records, embed=SIM_SETTING, prefilled=True)
    return {**alone, "standin": standin, "tokenizer_per_s": tokenizer, "reference": reference}


def simulated_rate(texts: list[str], model: str, take: int) -> dict[str, Any]:
    """The stand-in alone on these passages, tokenized beforehand and cut as the stage cuts each take."""
    sim = SimulatedAccelerator()
    ids = ceiling.stage_ids(texts, model, sim.max_seq_length)
    budget, cap = SIM_SETTING["max_tokens"], SIM_SETTING["max_batch"]
    passes = [[ids[i] for i in group] for group in ceiling.cut([len(i) for i in ids], budget, cap, budget, take)]
    started = time.perf_counter()
    for batch in passes:
        sim.encode_ids(batch)
    seconds = time.perf_counter() - started
    return {"passages": len(texts), "passes": len(passes), "seconds": seconds, "passages_per_s": len(texts) / seconds}


def _stages_rows(results: dict[str, Any]) -> list[Row]:
    rows = []
    for stage, s in results["stages"].items():
        absolute = "met" if s["records_per_s"] >= LIGHT_STAGE_PER_S else "missed"
        bare, reference = s["bare"]["records_per_s"], s["reference"]["records_per_s"]
        rows.append(Row("stages", f"bare Faust agent on {stage}'s input (take + ack, no work)", bare, "events/s",
                        note="Faust's own ceiling here"))
        rows.append(Row("stages", f"librdkafka reference on {stage}'s input (consume, decode, encode, produce, "
                        "commit)", reference, "events/s", note="a light stage's skeleton in Python, no Faust"))
        rows.append(Row("stages", f"{stage} alone", s["records_per_s"], "events/s", "librdkafka reference beside it",
                        reference, _targets(results)["light"],
                        note=f"{s['process_records_per_s']:,.0f}/s in process() alone; "
                        f"≥ {LIGHT_STAGE_PER_S:,}/s absolute: {absolute}"))
        rows.append(Row("stages", f"{stage} against the bare Faust agent", s["records_per_s"], "events/s",
                        "bare Faust beside it", bare))
    return rows


@part("stages", "Each light stage alone (preprocess, classify, store), each after a bare Faust agent and a bare "
      "librdkafka loop on the same records.", rows=_stages_rows)
def run_stages(ctx: Context) -> dict[str, Any]:
    embedded, classified = stage_inputs(ctx.topology, ctx.passages, ctx.stage_records, ctx.model, ctx.device)
    measures = {"bare": measure.bare_faust, "reference": measure.librdkafka_reference, "stage": measure.stage_alone}
    found = {}
    for stage, records in (("preprocess", corpus.documents(ctx.stage_records, ctx.seed, "alone")),
                           ("classify", embedded), ("store", classified)):
        # Interleaved, bare agent, reference, then stage, twice in a full run: the best of each is kept (a
        # noisy reference errs high, so the ratio errs low).
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in measures}
        for i in range(1 if ctx.quick else 2):
            with ctx.console.status(f"{stage}: a bare Faust agent, the librdkafka reference, then the stage, on "
                                    f"{len(records)} records (round {i + 1}) ..."):
                for name, how in measures.items():
                    runs[name].append(how(ctx.bench, stage, records))
        best = {name: max(taken, key=lambda r: r["records_per_s"]) for name, taken in runs.items()}
        found[stage] = {**best["stage"], "bare": best["bare"], "reference": best["reference"],
                        "rounds": {name: [r["records_per_s"] for r in taken] for name, taken in runs.items()}}
    return found


def stage_inputs(topology: Any, passages: list[dict], n: int, model: str, device: str) -> tuple[list, list]:
    """`n` embedded and `n` classified records, cycling real passages and vectors under fresh ids."""
    base = passages[:256]
    vectors = encode(load_model(model, device), [p["text"] for p in base], batch_size=16)
    mid = model_id(model)
    embedded = [{**p, "model_id": mid, "dim": int(v.shape[0]), "vector": to_bytes(v)} for p, v in zip(base, vectors)]
    classify = load_stage(topology, "classify")
    classify.setup()
    labelled = [r[0] for r in classify.process([Incoming(e, None, "", 0, i, 0) for i, e in enumerate(embedded)])]

    return corpus.cycle(embedded, n), corpus.cycle(labelled, n)


def _pipeline_rows(results: dict[str, Any]) -> list[Row]:
    p, t = results["pipeline"], _targets(results)
    rows = [Row("pipeline", "whole pipeline, produce → stored", p["passages_per_s"], "passages/s",
                "ceiling beside it", p["ceiling"]["passages_per_s"], t["pipeline"],
                note=f"{p['documents_per_s']:,.1f} documents/s")]
    if n := results.get("naive"):
        rows.append(Row("pipeline", "whole pipeline against the naive loop", p["passages_per_s"], "passages/s",
                        "naive loop", n["passages_per_s"], t["naive"]))
    rows.append(Row("pipeline", f"latency p99, ingest → stored, at {p['steady_documents_per_s']:.1f} documents/s",
                    p["latency_p99_s"], "s", "limit", LATENCY_LIMIT_S, 1.0, at_most=True,
                    note=f"p50 {p['latency_p50_s']:.2f} s, {p['latency_samples']:.0f} passages"))
    return rows


@part("pipeline", "All four stages: the maximum rate, then ingest-to-stored latency at half of it.",
      rows=_pipeline_rows)
def run_pipeline(ctx: Context) -> dict[str, Any]:
    docs = len(ctx.documents)
    steady_docs = corpus.documents(docs * 4, ctx.seed + 1, "steady")
    counts = Counter(p["doc_id"] for p in corpus.passages(ctx.topology, steady_docs))
    nearby = _nearby(ctx, ctx.texts)
    found = measure.whole_pipeline(ctx.bench, ctx.documents, len(ctx.passages),
                                   [(d, counts[d["doc_id"]]) for d in steady_docs], ctx.steady_seconds,
                                   embed=_setting(ctx))
    return {**found, "ceiling": nearby}
