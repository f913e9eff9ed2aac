"""The bridges section of topics.yaml: what each kind needs, topics that must be declared, and the CLI's errors.
No servers here."""

from __future__ import annotations

import pytest
import yaml

from pipeline.bridges.redis import _body
from pipeline.config import validate_topology
from pipeline.errors import ConfigError
from tests.conftest import ROOT, run_cli

BASE = {"topics": {"in": {"value_schema": "pipeline.docs.RawDocument", "key_field": "doc_id"}, "dlq": {}},
        "stages": {}}


def topology(bridges: dict):
    return validate_topology({**BASE, "bridges": bridges}, "topics.yaml")


def test_a_source_defaults_to_its_ingest_topic_and_kind_fields_are_required():
    t = topology({"sources": {"r": {"kind": "redis", "url": "redis://x", "stream": "s", "topic": "in",
                                    "dead_letter": "dlq"}}})
    assert t.bridge_source("r").batch == 100 and t.bridge_source("r").format == "json"
    with pytest.raises(ConfigError, match=r"bridges.sources.q: Value error, a rabbitmq source needs queue"):
        topology({"sources": {"q": {"kind": "rabbitmq", "url": "amqp://x", "topic": "in", "dead_letter": "dlq"}}})
    with pytest.raises(ConfigError, match=r"a nats source needs stream and subject"):
        topology({"sources": {"n": {"kind": "nats", "url": "nats://x", "topic": "in", "dead_letter": "dlq"}}})
    with pytest.raises(ConfigError, match=r"give url \(or url_env"):
        topology({"sources": {"r": {"kind": "redis", "stream": "s", "topic": "in", "dead_letter": "dlq"}}})
    with pytest.raises(ConfigError, match=r"kind: Input should be 'nats', 'rabbitmq' or 'redis'"):
        topology({"sources": {"k": {"kind": "kafka", "url": "x", "topic": "in", "dead_letter": "dlq"}}})


def test_topics_must_be_declared_and_an_ingest_topic_must_exist():
    with pytest.raises(ConfigError, match=r"bridges.sources.r.dead_letter: topic 'nope' is not declared under "
                                          r"'topics'; add `nope: {partitions: 1}` there, then run `pipeline topics"):
        topology({"sources": {"r": {"kind": "redis", "url": "u", "stream": "s", "topic": "in", "dead_letter": "nope"}}})
    with pytest.raises(ConfigError, match=r"no stages to take the ingest topic from"):
        topology({"sources": {"r": {"kind": "redis", "url": "u", "stream": "s", "dead_letter": "dlq"}}})
    with pytest.raises(ConfigError, match=r"bridges.sinks.o.topic: topic 'x' is not declared"):
        topology({"sinks": {"o": {"kind": "redis", "url": "u", "stream": "s", "topic": "x", "group": "g",
                                  "dead_letter": "dlq"}}})
    with pytest.raises(ConfigError, match=r"a rabbitmq sink needs exchange"):
        topology({"sinks": {"o": {"kind": "rabbitmq", "url": "u", "topic": "in", "group": "g", "dead_letter": "dlq"}}})


def test_url_env_wins_over_url(monkeypatch: pytest.MonkeyPatch):
    t = topology({"sources": {"r": {"kind": "redis", "url": "redis://file", "url_env": "T_REDIS", "stream": "s",
                                    "topic": "in", "dead_letter": "dlq"}}})
    assert t.bridge_source("r").connect_url() == "redis://file"
    monkeypatch.setenv("T_REDIS", "redis://env")
    assert t.bridge_source("r").connect_url() == "redis://env"


def test_a_redis_entry_without_a_body_field_is_its_fields_as_json():
    assert _body({b"body": b"\x00avro"}) == b"\x00avro"
    assert yaml.safe_load(_body({b"doc_id": b"d1", b"text": b"hi"})) == {"doc_id": "d1", "text": "hi"}


def test_the_commented_example_in_topics_yaml_is_valid_once_uncommented():
    text = (ROOT / "topics.yaml").read_text()
    block = text[text.index("# bridges:"):]
    example = yaml.safe_load("\n".join(line[2:] for line in block.splitlines() if line.startswith("# ")))
    assert "bridges" not in yaml.safe_load(text)
    raw = yaml.safe_load(text.replace("  # docs.dlq.bridges:", "  docs.dlq.bridges:"))  # its topic, commented too
    t = validate_topology({**raw, **example}, "topics.yaml")
    assert set(t.bridges.sources) == {"redis", "rabbitmq", "nats"} and t.bridge_source("nats").stream == "DOCS"
    assert t.bridge_sink("classified-to-redis").maxlen == 1_000_000 and t.ingest_topic() == "docs.raw"


def test_unknown_bridge_is_a_clear_error():
    done = run_cli("bridge", "in", "nope")
    assert done.returncode != 0 and "no bridge source 'nope'" in done.stderr and "Traceback" not in done.stderr
    assert "commented `bridges:` example" in done.stderr  # the repository's topics.yaml declares none
    done = run_cli("bridge", "out", "nope")
    assert done.returncode != 0 and "no bridge sink 'nope'" in done.stderr


def test_a_bridge_name_is_one_bridge_and_a_sink_scales_within_its_partitions():
    redis = {"kind": "redis", "url": "redis://x", "stream": "s", "topic": "in", "dead_letter": "dlq"}
    with pytest.raises(ConfigError, match=r"bridges: 'r' is both a source and a sink"):
        topology({"sources": {"r": redis}, "sinks": {"r": {**redis, "group": "g"}}})
    with pytest.raises(ConfigError, match=r"bridges.sinks.o.scaling.max_replicas: 4 is more than the 3 partition"):
        topology({"sinks": {"o": {**redis, "group": "g", "scaling": {"max_replicas": 4}}}})
    t = topology({"sources": {"r": {**redis, "scaling": {"max_replicas": 8}}}, "sinks": {"o": {**redis, "group": "g"}}})
    assert (t.bridge_max_replicas("r"), t.bridge_max_replicas("o")) == (8, 3)  # a source is not bound by partitions
    assert t.bridge_source("r").consumer_name("r") == "bridge-r" and t.bridge_source("r").group_name("r") == \
        "pipeline-bridge-r"
