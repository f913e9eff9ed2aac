"""`pipeline topics`: apply creates what topics.yaml declares, is idempotent, reports and fixes drift."""

from __future__ import annotations


import yaml
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from pipeline.kafka import admin
from pipeline.config import load_topology
from tests.conftest import run_cli


def test_apply_creates_exactly_what_is_declared(topology) -> None:
    path, topo = topology
    client = admin.admin_client(topo)
    dry = run_cli("-c", str(path), "topics", "apply", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stderr
    assert admin.cluster_topics(client, list(topo.topics)) == {}  # dry run changed nothing

    done = run_cli("-c", str(path), "topics", "apply")
    assert done.returncode == 0, done.stderr
    found = admin.cluster_topics(client, list(topo.topics))
    assert set(found) == set(topo.topics)
    for want in topo.resolved_topics():
        have = found[want.name]
        assert (have.partitions, have.replication) == (want.partitions, want.replication)
        for key, value in want.config.items():
            assert have.config[key] == value

    again = run_cli("-c", str(path), "topics", "apply")
    assert again.returncode == 0
    assert "up to date" in again.stderr
    assert admin.plan(topo, admin.cluster_topics(client, list(topo.topics))) == []


def test_drift_is_reported_and_fixed_only_with_fix(topology) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    client = admin.admin_client(topo)
    raw_topic = next(name for name in topo.topics if name.endswith("docs.raw"))
    # Someone changes retention on the cluster, and the file grows the topic's partitions.
    resource = ConfigResource(ResourceType.TOPIC, raw_topic, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    for fut in client.incremental_alter_configs([resource]).values():
        fut.result()
    raw = yaml.safe_load(path.read_text())
    raw["topics"][raw_topic]["partitions"] = 4
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)

    kinds = sorted(a.kind for a in admin.plan(topo, admin.cluster_topics(client, list(topo.topics))))
    assert kinds == ["add-partitions", "alter-config"]

    report = run_cli("-c", str(path), "topics", "apply")
    assert report.returncode == 1  # drift left, and said so
    assert "retention.ms: 1000 -> 604800000" in report.stderr
    assert "--fix" in report.stderr
    assert admin.cluster_topics(client, [raw_topic])[raw_topic].partitions == 2

    fixed = run_cli("-c", str(path), "topics", "apply", "--fix")
    assert fixed.returncode == 0, fixed.stderr
    have = admin.cluster_topics(client, [raw_topic])[raw_topic]
    assert have.partitions == 4 and have.config["retention.ms"] == "604800000"
    assert admin.plan(topo, admin.cluster_topics(client, list(topo.topics))) == []


def test_fewer_partitions_in_file_is_unfixable_drift(topology) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    raw = yaml.safe_load(path.read_text())
    name = next(n for n in raw["topics"] if n.endswith("docs.passages"))
    raw["topics"][name]["partitions"] = 1
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = run_cli("-c", str(path), "topics", "apply", "--fix")
    assert done.returncode == 1
    assert "Kafka cannot remove partitions" in " ".join(done.stderr.split())
    actions = admin.plan(load_topology(path), admin.cluster_topics(admin.admin_client(topo)))
    assert [(a.kind, a.topic, a.fixable) for a in actions] == [("drift", name, False)]


def test_list_and_describe(topology) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    name = next(n for n in topo.topics if n.endswith("docs.embedded"))
    listing = run_cli("-c", str(path), "topics", "list")
    assert listing.returncode == 0 and name in listing.stderr
    described = run_cli("-c", str(path), "topics", "describe", name)
    assert described.returncode == 0 and "retention.ms" in described.stderr
