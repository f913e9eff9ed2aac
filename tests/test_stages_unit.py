"""Fast tests of each stage's domain code on its own (real tokenizer, model and Qdrant, no Kafka): through the
test kit (pipeline.testing.run_stage: the topics' real Avro codecs and the runtime's batch path) where they can."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import Incoming, Reject, TransientError
from pipeline.config import load_topology
from pipeline.errors import ConfigError
from pipeline.runtime.batch import isolate
from pipeline.runtime.stage import load_stage
from pipeline.testing import run_stage
from stages.classifier import Head, quality, train_head
from stages.embed import token_batches
from stages.model import from_bytes, ids_from_bytes, ids_to_bytes, load_tokenizer, to_bytes, tokenizer_id
from stages.preprocess import normalise, pack
from stages.store import point_id
from stages.vectorstore import stored_points

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "topics.yaml"
LINEAGE = {"topic": "t", "partition": 0, "offset": 0, "ingest_time_ms": 0}


@pytest.fixture(scope="module")
def topology():
    return load_topology(ROOT / "topics.yaml")


def _incoming(value: dict, offset: int = 0) -> Incoming:
    return Incoming(value, b"k", "docs.raw", 1, offset, 1_700_000_000_000)


# --- preprocess -------------------------------------------------------------------------------------------

def test_normalise_nfc_html_controls_whitespace() -> None:
    text = "<p>Cafe\u0301 <b>menu</b></p><script>alert('x')</script>\x00\x07 one.   Two!\n\n<div>Three</div>"
    assert normalise(text) == ["Café menu", "one.", "Two!", "Three"]


def test_normalise_leaves_non_html_angle_brackets() -> None:
    assert normalise("a < b and c > d.") == ["a < b and c > d."]


def test_pack_respects_budget_and_overlap() -> None:
    sentences = [f"s{i}" for i in range(6)]
    passages = pack(sentences, [40] * 6, budget=100, overlap=1)
    assert passages == ["s0 s1", "s1 s2", "s2 s3", "s3 s4", "s4 s5"]
    assert pack(sentences, [40] * 6, budget=100, overlap=0) == ["s0 s1", "s2 s3", "s4 s5"]


def test_preprocess_splits_long_documents_within_the_model_limit() -> None:
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    long_text = " ".join(f"Sentence number {i} talks about sockets, threads and files." for i in range(120))
    unbroken = "word" * 3000  # one "sentence" far over the limit
    docs = [{"doc_id": "long", "text": long_text, "title": "T", "source": None, "metadata": {"a": "b"}},
            {"doc_id": "unbroken", "text": unbroken, "title": None, "source": None, "metadata": {}},
            {"doc_id": "empty", "text": "<p> \t </p>", "title": None, "source": None, "metadata": {}},
            {"doc_id": "big", "text": "x" * 1_000_001, "title": None, "source": None, "metadata": {}}]
    run = run_stage("preprocess", docs, CONFIG, timestamp_ms=1_700_000_000_000)
    long = [p for p in run.outputs if p["doc_id"] == "long"]
    unbroken_out = [p for p in run.outputs if p["doc_id"] == "unbroken"]
    assert len(long) + len(unbroken_out) == len(run.outputs) and len(long) > 3
    assert run.output_keys == [p["doc_id"].encode() for p in run.outputs]  # keyed by doc_id (key_field)
    for passages in (long, unbroken_out):
        assert [p["passage_index"] for p in passages] == list(range(len(passages)))
        assert {p["passage_count"] for p in passages} == {len(passages)}
        for p in passages:
            assert len(tokenizer.encode(p["text"]).ids) <= 256  # with [CLS] and [SEP]
            assert p["content_hash"] == hashlib.sha256(p["text"].encode()).hexdigest()
    assert long[0]["lineage"] == {"topic": "docs.raw", "partition": 0, "offset": 0, "ingest_time_ms": 1_700_000_000_000}
    assert long[0]["metadata"] == {"a": "b"} and long[0]["title"] == "T"
    assert "Sentence number 0 talks" in long[0]["text"] and "Sentence number 119" in long[-1]["text"]
    assert [(d.reason, d.value["doc_id"]) for d in run.dead_letters] == [("empty-text", "empty"), ("too-large", "big")]


def test_preprocess_carries_the_token_ids_of_each_passage_text() -> None:
    """What embed would get by tokenizing the passage text itself, for every passage of the sample and odd Unicode;
    none for passages holding a piece of a sentence cut at token boundaries (its text tokenizes differently)."""
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    sample = [json.loads(line) for line in (ROOT / "stages/data/sample.jsonl").read_text().splitlines()][:120]
    odd = {"doc_id": "odd", "text": "İstanbul, Ⅻ, ﬁne Çafé naïve ÅNGSTRÖM. 東京 😀 <b>bold</b>\ttab. Done!"}
    cut = {"doc_id": "cut", "text": "socket " * 300}  # one sentence over the limit: cut in two
    run = run_stage("preprocess", [*sample, odd, cut], CONFIG)
    carried = [p for p in run.outputs if p["token_ids"] is not None]
    assert len(carried) >= len(sample) and any(p["doc_id"] == "odd" for p in carried)
    for p in carried:
        assert ids_from_bytes(p["token_ids"]) == tokenizer.encode(p["text"]).ids, p["text"][:80]
        assert p["tokenizer_id"] == tokenizer_id("all-MiniLM-L6-v2")
    assert [p["token_ids"] for p in run.outputs if p["doc_id"] == "cut"] == [None, None]


def test_embed_uses_carried_ids_only_from_its_own_tokenizer(topology) -> None:
    stage = load_stage(topology, "embed")
    stage.setup()
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    base = {"passage_index": 0, "passage_count": 1, "content_hash": "h", "title": None, "source": None,
            "metadata": {}, "lineage": LINEAGE, "text": "Compute the square root of a number."}
    other = ids_to_bytes(tokenizer.encode("Open a TCP socket to a server.").ids)
    records = [{**base, "doc_id": "plain"},
               {**base, "doc_id": "mine", "token_ids": other, "tokenizer_id": stage.tokenizer_id},
               {**base, "doc_id": "foreign", "token_ids": other, "tokenizer_id": "not-this-one"}]
    plain, mine, foreign = (from_bytes(o["vector"]) for o in run_stage(stage, records).outputs)
    socket = stage.embed_texts({"texts": ["Open a TCP socket to a server."]})["vectors"][0]
    assert np.allclose(mine, socket, atol=1e-5)  # the carried ids were embedded, not the text
    assert np.allclose(foreign, plain, atol=1e-5) and not np.allclose(plain, mine, atol=1e-2)


def test_preprocess_options_from_the_kit() -> None:
    text = "One sentence here. Another sentence there. A third one follows."
    doc = {"doc_id": "d", "text": text, "title": None, "source": None, "metadata": {}}
    assert len(run_stage("preprocess", [doc], CONFIG).outputs) == 1
    small = run_stage("preprocess", [doc], CONFIG, options={"max_tokens": 8, "overlap_sentences": 0})
    assert [p["text"] for p in small.outputs] == ["One sentence here.", "Another sentence there.", "A third one follows."]
    with pytest.raises(ConfigError, match=r"stages\.preprocess\.options\.overlap: Extra inputs are not permitted"):
        run_stage("preprocess", [doc], CONFIG, options={"overlap": 0})


# --- embed ------------------------------------------------------------------------------------------------

def test_token_batches_cover_everything_within_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(5, 256, size=300)]
    batches = token_batches(lengths, budget=2048, max_size=64)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 2048
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)


def test_token_batches_cut_where_passes_cost_least() -> None:
    # Short and long texts in one batch: with a CPU's small cost per pass, two passes pad far less than one.
    lengths = [100, 10] * 16
    short, long = [i for i in range(32) if lengths[i] == 10], [i for i in range(32) if lengths[i] == 100]
    assert token_batches(lengths, budget=4096, max_size=64, cost=80) == [short, long]
    assert token_batches(lengths, budget=4096, max_size=64) == [short + long]  # a pass worth the budget: fewest
    assert token_batches(lengths, budget=1000, max_size=64) == [short, long[:10], long[10:]]
    assert token_batches([], budget=4096, max_size=64) == []
    assert token_batches([300], budget=256, max_size=64) == [[0]]  # longer than the budget: a pass of its own


def test_token_batches_match_the_cheapest_cut_found_by_search() -> None:
    """Every way to cut the length-sorted texts into passes, tried: none costs less than the one chosen."""
    from itertools import combinations

    rng = np.random.default_rng(1)
    for _ in range(40):
        lengths = [int(n) for n in rng.integers(5, 120, size=int(rng.integers(1, 10)))]
        budget, max_size = int(rng.integers(120, 600)), int(rng.integers(1, 6))
        cost = int(rng.integers(0, budget))  # from the budget up, the cut is the fewest passes (checked below)
        ordered = sorted(lengths)

        def total(groups: list[list[int]]) -> float:
            if any(len(g) > max_size or (len(g) > 1 and len(g) * max(g) > budget) for g in groups):
                return float("inf")
            return sum(cost + len(g) * max(g) for g in groups)

        every_cut = [[ordered[a:b] for a, b in zip((0, *cuts), (*cuts, len(ordered)))]
                     for k in range(len(ordered)) for cuts in combinations(range(1, len(ordered)), k)]
        cheapest = min(total(groups) for groups in every_cut)
        chosen = token_batches(lengths, budget, max_size, cost)
        assert sorted(i for b in chosen for i in b) == list(range(len(lengths)))
        assert total([[lengths[i] for i in b] for b in chosen]) == cheapest
        # A pass worth the budget (the default cost): the fewest passes any feasible cut has, each within bounds.
        fewest = token_batches(lengths, budget, max_size)
        assert sorted(i for b in fewest for i in b) == list(range(len(lengths)))
        assert total([[lengths[i] for i in b] for b in fewest]) < float("inf")
        assert len(fewest) == min(len(groups) for groups in every_cut if total(groups) < float("inf"))


def test_embed_stage_real_model(topology) -> None:
    stage = load_stage(topology, "embed")
    stage.setup()
    texts = ["Open a TCP socket to a server.", "Compute the square root of a number.",
             "Open a TCP socket to a server."]
    base = {"passage_index": 0, "passage_count": 1, "content_hash": "h", "title": None, "source": None,
            "metadata": {}, "lineage": LINEAGE}
    out = run_stage(stage, [{**base, "doc_id": str(i), "text": t} for i, t in enumerate(texts)]).outputs
    assert [o["doc_id"] for o in out] == ["0", "1", "2"]
    vectors = [from_bytes(o["vector"]) for o in out]
    assert all(o["model_id"] == "all-MiniLM-L6-v2" and o["dim"] == 384 for o in out)
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-3 for v in vectors)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.5
    assert len(stage.embed_texts({"texts": ["x"]})["vectors"][0]) == 384


# --- classify ---------------------------------------------------------------------------------------------

def test_quality_matches_definition() -> None:
    from sklearn.metrics import f1_score

    truth = ["a", "a", "b", "b", "c", "c", "c"]
    predicted = ["a", "b", "b", "b", "c", "a", "c"]
    q = quality(truth, predicted)
    assert q["accuracy"] == pytest.approx(5 / 7)
    assert q["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_head_trains_saves_and_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.3 * rng.normal(size=(40, 16)) for c in centres]).astype(np.float32)
    y = [label for label in ("x", "y", "z") for _ in range(40)]
    head = train_head(x, y, "model-a")
    assert quality(y, [head.labels[i] for i in head.scores(x).argmax(1)])["accuracy"] > 0.95
    head.save(tmp_path / "head.npz")
    loaded = Head.load(tmp_path / "head.npz")
    assert loaded.labels == ["x", "y", "z"] and loaded.model_id == "model-a"
    assert np.allclose(loaded.scores(x), head.scores(x))


def test_classify_refuses_a_head_of_another_model(tmp_path: Path) -> None:
    Head(["a", "b"], np.zeros((384, 2), np.float32), np.zeros(2, np.float32), "other-model").save(tmp_path / "h.npz")
    with pytest.raises(ConfigError, match="trained on other-model embeddings"):
        run_stage("classify", [], CONFIG, options={"mode": "trained", "head": str(tmp_path / "h.npz")})


def test_zero_shot_labels_and_model_mismatch(topology) -> None:
    from stages.model import encode, load_model

    vector = encode(load_model("all-MiniLM-L6-v2"), ["create a TCP connection to an HTTP server"])[0]
    value = {"doc_id": "d", "passage_index": 0, "passage_count": 1, "text": "x", "content_hash": "h",
             "title": None, "source": None, "metadata": {}, "lineage": LINEAGE,
             "model_id": "all-MiniLM-L6-v2", "dim": 384, "vector": to_bytes(vector)}
    run = run_stage("classify", [value, {**value, "doc_id": "e", "model_id": "another"}], CONFIG)
    [result] = run.outputs
    assert result["doc_id"] == "d" and result["label"] == "networking"
    assert set(result["scores"]) == set(topology.stages["classify"].options["labels"])
    assert result["classifier_id"].startswith("zero-shot:")
    assert [(d.reason, d.value["doc_id"]) for d in run.dead_letters] == [("model-mismatch", "e")]


# --- store ------------------------------------------------------------------------------------------------

def _store(topology, **options):
    """The store stage with `options` over the file's (a copy of the topology; the repo's stays as it is)."""
    copied = topology.model_copy(deep=True)
    copied.stages["store"].options.update(options)
    return load_stage(copied, "store")


def test_store_upserts_idempotently_and_searches(topology, tmp_path: Path) -> None:
    assert point_id("d", 0) == point_id("d", 0) != point_id("d", 1)
    stage = _store(topology, path=str(tmp_path / "qdrant"), collection="t")
    physical = "t--m"
    stage.setup()
    rng = np.random.default_rng(2)
    records = []
    for i in range(6):
        v = rng.normal(size=8).astype(np.float32)
        v /= np.linalg.norm(v)
        records.append({"doc_id": f"d{i // 2}", "passage_index": i % 2, "passage_count": 2, "text": f"t{i}",
                        "content_hash": "h", "title": None, "source": None, "metadata": {"label": "a"},
                        "lineage": {"topic": "raw", "partition": 0, "offset": i // 2, "ingest_time_ms": 1},
                        "model_id": "m", "dim": 8, "vector": to_bytes(v), "label": "a" if i < 4 else "b",
                        "score": 0.9, "scores": {"a": 0.9, "b": 0.1}, "classifier_id": "c"})
    assert run_stage(stage, records).dead_letters == []
    run_stage(stage, records)  # a replay writes the same points again
    assert stage.stats({})["points"] == 6
    payload = dict(stage.store.scroll(physical))[point_id("d0", 0)]
    assert set(payload) == set(records[0]) - {"vector"}  # every input field but the vector bytes
    hits = stage.search({"vector": from_bytes(records[5]["vector"]).tolist(), "k": 2})["hits"]
    assert hits[0]["payload"]["doc_id"] == "d2" and hits[0]["payload"]["passage_index"] == 1
    only_a = stage.search({"vector": from_bytes(records[5]["vector"]).tolist(), "k": 10, "label": "a"})["hits"]
    assert {h["payload"]["label"] for h in only_a} == {"a"} and len(only_a) == 4
    assert stage.quality({"truth": "label"}) == {"n": 6, "accuracy": pytest.approx(4 / 6),
                                                  "macro_f1": pytest.approx(0.8)}
    # The same document re-split into one passage: its old second passage goes.
    shorter = {**records[0], "passage_count": 1}
    run_stage(stage, [shorter])
    assert stage.stats({})["points"] == 5
    assert point_id("d0", 1) not in dict(stage.store.scroll(physical))

    # Blue/green: a new model's vectors go to their own collection; the alias moves only on promote.
    run_stage(stage, [{**r, "model_id": "m2", "label": "b"} for r in records[:3]])
    listing = stage.collections({})
    assert listing["target"] == physical
    assert [(c["name"], c["points"]) for c in listing["collections"]] == [("t--m", 5), ("t--m2", 3)]
    assert stage.search({"vector": from_bytes(records[0]["vector"]).tolist(), "k": 10,
                         "where": {"doc_id": "d1", "passage_index": 1}})["hits"][0]["id"] == point_id("d1", 1)
    query = from_bytes(records[0]["vector"]).tolist()
    assert stage.search({"vector": query, "k": 1})["hits"][0]["payload"]["model_id"] == "m"
    assert stage.promote({"collection": "t--m2"}) == {"alias": "t", "previous": "t--m", "target": "t--m2"}
    assert stage.search({"vector": query, "k": 1})["hits"][0]["payload"]["model_id"] == "m2"
    assert stage.stats({})["points"] == 3 and stage.stats({"collection": "t--m"})["points"] == 5
    with pytest.raises(ValueError, match="no collection 'nope'"):
        stage.promote({"collection": "nope"})
    # A delete marker removes every passage of its document, in that model's collection only.
    marker = {**records[4], "passage_index": 0, "passage_count": 0, "vector": b"", "dim": 0, "deleted": True}
    run_stage(stage, [marker])
    assert stage.stats({"collection": "t--m"})["points"] == 3 and stage.stats({})["points"] == 3
    stage.close()
    assert len(stored_points(tmp_path / "qdrant", "t--m")) == 3 and len(stored_points(tmp_path / "qdrant", "t")) == 3


def test_store_payload_exclusions_are_an_option(topology, tmp_path: Path) -> None:
    stage = _store(topology, path=str(tmp_path / "qdrant"), payload_exclude=["vector", "scores", "text"])
    stage.setup()
    record = {"doc_id": "d", "passage_index": 0, "passage_count": 1, "text": "t", "content_hash": "h",
              "title": None, "source": None, "metadata": {}, "lineage": LINEAGE, "model_id": "m", "dim": 2,
              "vector": to_bytes(np.array([0.6, 0.8], np.float32)), "label": "a", "score": 1.0,
              "scores": {"a": 1.0}, "classifier_id": "c"}
    run_stage(stage, [record])
    [payload] = dict(stage.store.scroll("docs--m")).values()
    stage.close()
    assert set(payload) == set(record) - {"vector", "scores", "text"}


# --- runtime ----------------------------------------------------------------------------------------------

def test_isolate_bisects_to_the_poison_records() -> None:
    calls = []

    def process(items):
        calls.append(len(items))
        if any(i.value["text"] == "poison" for i in items):
            raise ValueError("cannot handle poison")
        return [[{"ok": i.value["text"]}] for i in items]

    texts = ["a", "b", "poison", "c", "d", "e", "poison", "f"]
    results = isolate(process, [_incoming({"text": t}, n) for n, t in enumerate(texts)], "test")
    assert [r.reason if isinstance(r, Reject) else r[0]["ok"] for r in results] == \
        ["a", "b", "stage-error", "c", "d", "e", "stage-error", "f"]
    assert len(calls) < 2 * len(texts)


def test_isolate_lets_transient_errors_through() -> None:
    def process(items):
        raise TransientError("qdrant down")

    with pytest.raises(TransientError):
        isolate(process, [_incoming({"text": "x"})], "test")
