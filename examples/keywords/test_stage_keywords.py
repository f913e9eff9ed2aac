"""The keywords stage on plain records, through the real Avro codecs of its topics."""

from __future__ import annotations

from pathlib import Path

from pipeline.testing import run_stage

CONFIG = Path(__file__).resolve().parent / "topics.yaml"
TEXT = "Sockets carry bytes between network servers and clients over TCP connections. A server listens on a port."
# A ClassifiedPassage (the stage's input), as the classify stage writes it.
RECORD = {
    "doc_id": "net-1",
    "passage_index": 0,
    "passage_count": 1,
    "text": TEXT,
    "content_hash": "0" * 64,
    "title": "Sockets",
    "source": None,
    "metadata": {"label": "networking"},
    "lineage": {"topic": "docs.raw", "partition": 0, "offset": 7, "ingest_time_ms": 1700000000000},
    "model_id": "all-MiniLM-L6-v2",
    "dim": 2,
    "vector": b"\x00\x00\x80?\x00\x00\x00\x00",
    "label": "networking",
    "score": 0.5,
    "scores": {"networking": 0.5, "text": 0.25},
    "classifier_id": "zero-shot",
}


def test_keywords_adds_the_best_words_and_keeps_the_rest() -> None:
    run = run_stage("keywords", [RECORD], config=CONFIG, options={"top_k": 3})
    assert not run.dead_letters
    assert len(run.outputs) == 1
    out = run.outputs[0]
    assert {k: out[k] for k in RECORD} == RECORD  # the input's fields pass through
    assert out["keywords"] == ["tcp", "sockets", "connections"]


def test_a_passage_without_text_is_a_dead_letter() -> None:
    blank = {**RECORD, "doc_id": "blank", "text": "  "}
    run = run_stage("keywords", [RECORD, blank], config=CONFIG)
    assert [o["doc_id"] for o in run.outputs] == ["net-1"]
    assert len(run.outputs[0]["keywords"]) == 5
    assert [(d.reason, d.value["doc_id"]) for d in run.dead_letters] == [("empty-text", "blank")]
