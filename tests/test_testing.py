"""The stage test kit (pipeline.testing): run_stage in-process, and stage_on_broker on the real broker, with a
small stage written as a stranger would, against the public API only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import pipeline
from pipeline import Incoming, Reject, Result, Stage, TransientError
from pipeline.errors import ConfigError
from pipeline.testing import run_stage
from tests.conftest import PORT_SHIFT, ROOT

CALLS: list[str] = []  # what the stage saw, across instances: "setup", "close", "process:N"


class ShoutStage(Stage):
    """Upper-cases a document's text; 'poison' raises (a bug), empty text is rejected, 'flaky' is transient."""

    class Options(pipeline.Options):
        suffix: str = "!"

    def setup(self) -> None:
        CALLS.append("setup")

    def process(self, batch: list[Incoming]) -> list[Result]:
        CALLS.append(f"process:{len(batch)}")
        if any(item.value["text"] == "poison" for item in batch):
            raise ValueError("cannot shout poison")
        if any(item.value["text"] == "flaky" for item in batch):
            raise TransientError("the loudspeaker is warming up")
        return [[{**item.value, "text": item.value["text"].upper() + self.options.suffix}] if item.value["text"]
                else Reject("empty-text", "nothing to shout") for item in batch]

    def close(self) -> None:
        CALLS.append("close")


def _config(folder: Path, max_records: int = 4, prefix: str = "") -> Path:
    raw = {
        "schemas_dir": str(ROOT / "schemas"),
        "topics": {
            f"{prefix}in": {"value_schema": "pipeline.docs.RawDocument", "key_field": "doc_id", "partitions": 1},
            f"{prefix}out": {"value_schema": "pipeline.docs.RawDocument", "key_field": "doc_id", "partitions": 1},
            f"{prefix}dlq": {"partitions": 1},
        },
        "stages": {"shout": {"impl": "tests.test_testing:ShoutStage", "input": f"{prefix}in",
                             "output": f"{prefix}out", "dead_letter": f"{prefix}dlq", "group": f"{prefix}shout",
                             "batch": {"max_records": max_records, "max_wait_ms": 20},
                             "options": {"suffix": "!!"}}},
    }
    path = folder / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _doc(doc_id: str, text: str) -> dict:
    return {"doc_id": doc_id, "text": text, "title": None, "source": None, "metadata": {}}


def test_run_stage_outputs_rejects_bisection_and_undecodable_input(tmp_path: Path) -> None:
    CALLS.clear()
    config = _config(tmp_path, max_records=4)
    docs = [_doc("a", "hi"), _doc("b", "poison"), _doc("c", ""), _doc("d", "yo"), _doc("e", "ok")]
    run = run_stage("shout", [*docs[:3], b"\x00junk", *docs[3:]], config)
    assert run.outputs == [_doc("a", "HI!!"), _doc("d", "YO!!"), _doc("e", "OK!!")]
    assert run.output_keys == [b"a", b"d", b"e"]
    assert [(d.reason, d.value and d.value["doc_id"]) for d in run.dead_letters] == \
        [("stage-error", "b"), ("empty-text", "c"), ("bad-magic", None)]
    poison, empty, junk = run.dead_letters
    assert poison.message == "ValueError: cannot shout poison" and poison.headers["stage"] == "shout"
    assert poison.value == docs[1] and poison.raw.startswith(b"\xc3\x01")  # the original single-object bytes
    assert junk.raw == b"\x00junk" and junk.headers["offset"] == "3"
    # Batches of at most max_records (4 then 2 records; the junk one never reaches the stage), the poisoned one
    # bisected down to the bad record; setup before and close after.
    assert CALLS[0] == "setup" and CALLS[-1] == "close"
    sizes = [int(c.split(":")[1]) for c in CALLS if c.startswith("process")]
    assert sizes == [3, 1, 2, 1, 1, 2]


def test_run_stage_options_are_validated_and_typed(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert run_stage("shout", [_doc("a", "x")], config, options={"suffix": "?"}).outputs == [_doc("a", "X?")]
    with pytest.raises(ConfigError) as err:
        run_stage("shout", [], config, options={"sufix": "?"})
    assert str(err.value) == f"{config}: 1 problem(s):\n  stages.shout.options.sufix: Extra inputs are not permitted"
    with pytest.raises(ConfigError, match="no stage 'nope'"):
        run_stage("nope", [], config)


def test_run_stage_raises_transient_errors_and_refuses_records_off_schema(tmp_path: Path) -> None:
    CALLS.clear()
    config = _config(tmp_path)
    with pytest.raises(TransientError, match="warming up"):
        run_stage("shout", [_doc("a", "flaky")], config)
    assert CALLS == ["setup", "process:1", "close"]  # not retried forever, and closed
    with pytest.raises(ValueError, match="input 0 does not fit in's schema"):
        run_stage("shout", [{"doc_id": "a"}], config)


def test_run_stage_on_a_stage_instance_without_setup(tmp_path: Path) -> None:
    from pipeline.config import load_topology
    from pipeline.runtime.stage import load_stage

    CALLS.clear()
    stage = load_stage(load_topology(_config(tmp_path)), "shout")
    assert [run_stage(stage, [_doc(d, d)]).outputs[0]["text"] for d in ("x", "y")] == ["X!!", "Y!!"]
    assert CALLS == ["process:1", "process:1"]  # the caller owns setup and close
    assert run_stage("shout", [_doc("a", "b")], _config(tmp_path), setup=False).outputs == [_doc("a", "B!!")]
    assert "setup" not in CALLS


@pytest.mark.kafka
def test_stage_on_broker_runs_the_stage_as_a_worker(tmp_path: Path, stage_on_broker) -> None:
    import uuid

    from pipeline.avro.codecs import codec_for
    from pipeline.kafka.consume import consume
    from pipeline.kafka.sender import Sender

    config = _config(tmp_path, prefix=f"t{uuid.uuid4().hex[:8]}.")
    raw = yaml.safe_load(config.read_text())
    raw["stages"]["shout"]["web_port"] = 6190 + PORT_SHIFT
    config.write_text(yaml.safe_dump(raw))
    worker = stage_on_broker("shout", config)
    topology = worker.topology
    spec = topology.stage("shout")
    sender, codec = Sender(topology), codec_for(topology, spec.input)
    for doc in (_doc("a", "one"), _doc("b", ""), _doc("c", "three")):
        sender.send(spec.input, codec.encode(doc), doc["doc_id"].encode())
    assert sender.flush(30).ok
    outputs = [c.value for c in consume(topology, spec.output, from_beginning=True, max_messages=2, idle_timeout=60)]
    assert outputs == [_doc("a", "ONE!!"), _doc("c", "THREE!!")]
    letters = list(consume(topology, spec.dead_letter, from_beginning=True, max_messages=1, idle_timeout=60))
    assert [dict(c.headers)["pipeline.error.reason"] for c in letters] == [b"empty-text"]
    assert worker.stop() == 0
