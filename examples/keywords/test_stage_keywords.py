"""The keywords stage on plain records, through the real Avro codecs of its topics."""

from __future__ import annotations

from pathlib import Path

from pipeline.testing import run_stage

CONFIG = Path(__file__).resolve().parent / "topics.yaml"
# A valid ClassifiedPassage (the stage's input); edit it into a realistic one.
RECORD = {
    "doc_id": "example doc_id",
    "passage_index": 0,
    "passage_count": 0,
    "text": "example text",
    "content_hash": "example content_hash",
    "title": None,
    "source": None,
    "metadata": {},
    "lineage": {"topic": "example topic", "partition": 0, "offset": 0, "ingest_time_ms": 0},
    "model_id": "example model_id",
    "dim": 0,
    "vector": b'',
    "label": "example label",
    "score": 0.0,
    "scores": {},
    "classifier_id": "example classifier_id",
}


def test_keywords_keeps_the_input_fields() -> None:
    run = run_stage("keywords", [RECORD], config=CONFIG)
    assert not run.dead_letters
    assert len(run.outputs) == 1
    out = run.outputs[0]
    assert {k: out[k] for k in RECORD} == RECORD  # the input's fields pass through
    assert "keywords" in out
