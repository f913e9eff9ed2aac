"""topics.yaml validation: errors name the file, the path inside it and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_topology
from pipeline.errors import ConfigError
from pipeline.runtime.stage import find_stage, load_stage, stage_options
from stages.embed import EmbedStage
from stages.store import StoreStage
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, raw: dict) -> Path:
    raw["schemas_dir"] = str(ROOT / "schemas")
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _repo_raw() -> dict:
    return yaml.safe_load((ROOT / "topics.yaml").read_text())


def test_repo_topology_loads_with_defaults_applied() -> None:
    topology = load_topology(ROOT / "topics.yaml")
    raw = topology.topic("docs.raw")
    assert raw.partitions == 3 and raw.replication == 1
    assert raw.config["retention.ms"] == "604800000"
    assert topology.topic("docs.dlq.embed").config["retention.ms"] == "2592000000"
    assert topology.stages["embed"].batch.max_records == 64
    assert stage_options(topology, "embed").max_tokens is None  # an embed option now, not a batch setting


def test_env_overrides_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker.example:9094")
    assert load_topology(ROOT / "topics.yaml").kafka.bootstrap == "broker.example:9094"
    assert load_topology(ROOT / "topics.yaml", bootstrap="other:1").kafka.bootstrap == "other:1"


def test_bad_value_names_path(tmp_path: Path) -> None:
    raw = _repo_raw()
    raw["topics"]["docs.raw"]["partitions"] = 0
    raw["stages"]["embed"]["batch"]["max_recordz"] = 5
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    message = str(err.value)
    assert str(path) in message
    assert "topics.docs.raw.partitions: Input should be greater than or equal to 1" in message
    assert "stages.embed.batch.max_recordz: Extra inputs are not permitted" in message


def test_stage_must_reference_declared_topics(tmp_path: Path) -> None:
    raw = _repo_raw()
    raw["stages"]["store"]["input"] = "docs.nope"
    with pytest.raises(ConfigError, match="stages.store.input: topic 'docs.nope' is not declared"):
        load_topology(_write(tmp_path, raw))


def test_unknown_schema_name(tmp_path: Path) -> None:
    raw = _repo_raw()
    raw["topics"]["docs.raw"]["value_schema"] = "pipeline.docs.Nope"
    with pytest.raises(ConfigError, match="topics.docs.raw.value_schema: no schema named 'pipeline.docs.Nope'"):
        load_topology(_write(tmp_path, raw))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="topology file not found"):
        load_topology(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("topics: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_topology(bad)


def test_confluent_framing_needs_registry(tmp_path: Path) -> None:
    raw = _repo_raw()
    raw["framing"] = "confluent"
    with pytest.raises(ConfigError, match="needs a schema_registry"):
        load_topology(_write(tmp_path, raw))


def test_stage_options_are_typed_and_unknown_keys_refused(tmp_path: Path) -> None:
    topology = load_topology(ROOT / "topics.yaml")
    assert stage_options(topology, "preprocess").overlap_sentences == 1
    assert stage_options(topology, "store").payload_exclude == ["vector"]
    raw = _repo_raw()
    raw["stages"]["preprocess"]["options"]["overlap_sentence"] = 2
    raw["stages"]["embed"]["options"]["max_batch"] = 0
    raw["stages"]["classify"]["options"]["mode"] = "trained"  # and no head
    path = _write(tmp_path, raw)
    topology = load_topology(path)  # options belong to the stage's code: checked when a stage is loaded
    with pytest.raises(ConfigError) as err:
        load_stage(topology, "preprocess")
    assert str(err.value) == (f"{path}: 1 problem(s):\n"
                              "  stages.preprocess.options.overlap_sentence: Extra inputs are not permitted")
    with pytest.raises(ConfigError, match=r"stages\.embed\.options\.max_batch: Input should be greater than or equal to 1"):
        stage_options(topology, "embed")
    with pytest.raises(ConfigError, match=r"stages\.classify\.options: Value error, mode trained needs head"):
        stage_options(topology, "classify")


def test_batch_max_tokens_left_the_framework(tmp_path: Path) -> None:
    raw = _repo_raw()
    raw["stages"]["embed"]["batch"]["max_tokens"] = 4096
    with pytest.raises(ConfigError, match=r"stages\.embed\.batch\.max_tokens: Extra inputs are not permitted"):
        load_topology(_write(tmp_path, raw))


def test_misspelled_option_fails_pipeline_run(tmp_path: Path) -> None:
    raw = _repo_raw()
    raw["stages"]["preprocess"]["options"]["overlap_sentence"] = 2
    path = _write(tmp_path, raw)
    done = run_cli("-c", str(path), "run", "preprocess", timeout=60)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert f"{path}: 1 problem(s): stages.preprocess.options.overlap_sentence: Extra inputs are not permitted" \
        in message, done.stderr
    assert "Traceback" not in done.stderr
    # --option is validated the same way (on the repo's own file), and so is a bad value
    done = run_cli("run", "preprocess", "--option", "max_tokenz=128", timeout=60)
    assert done.returncode == 2 and "stages.preprocess.options.max_tokenz: Extra inputs" in done.stderr
    done = run_cli("run", "preprocess", "--option", "max_tokens=many", timeout=60)
    assert done.returncode == 2 and "stages.preprocess.options.max_tokens: Input should be a valid integer" \
        in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def test_stage_lookup_by_name_and_by_class(tmp_path: Path) -> None:
    topology = load_topology(ROOT / "topics.yaml")
    assert topology.stage("embed") is topology.stages["embed"]
    with pytest.raises(ConfigError, match=r"no stage 'nope' in .*topics\.yaml \(stages: preprocess, embed, classify, store\)"):
        topology.stage("nope")
    assert find_stage(topology, StoreStage) == "store" and find_stage(topology, EmbedStage) == "embed"
    raw = _repo_raw()
    raw["stages"]["second-store"] = {**raw["stages"]["store"], "group": "other", "web_port": 6199}
    with pytest.raises(ConfigError, match=r"2 stages \(second-store, store\) of type StoreStage"):
        find_stage(load_topology(_write(tmp_path, raw)), StoreStage)
    del raw["stages"]["second-store"], raw["stages"]["store"]
    with pytest.raises(ConfigError, match="no stage of type StoreStage, expected exactly one"):
        find_stage(load_topology(_write(tmp_path, raw)), StoreStage)


def test_duplicate_web_ports_name_both_stages(tmp_path: Path) -> None:
    raw = _repo_raw()
    raw["stages"]["store"]["web_port"] = raw["stages"]["embed"]["web_port"]
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    port = raw["stages"]["embed"]["web_port"]
    assert str(path) in str(err.value)
    assert f"stages.store.web_port: {port} is also the web port of stages.embed" in str(err.value)
