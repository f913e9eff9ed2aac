"""Topic administration: compare topics.yaml with the cluster, then create or fix (never delete)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ClusterMetadata,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from pipeline.kafka import clients
from pipeline.config import ResolvedTopic, Topology
from pipeline.errors import KafkaUnavailable

ActionKind = Literal["create", "add-partitions", "alter-config", "drift"]


@dataclass
class Action:
    """One step of a plan. `drift` steps are differences Kafka cannot fix (reported, never applied)."""

    kind: ActionKind
    topic: str
    detail: str
    fixable: bool = True
    partitions: int | None = None
    replication: int | None = None
    config: dict[str, str] = field(default_factory=dict)


@dataclass
class ClusterTopic:
    name: str
    partitions: int
    replication: int
    config: dict[str, str]


def admin_client(topology: Topology) -> AdminClient:
    return clients.admin(topology)


def _resolve(futures: dict, what: str) -> dict:
    """Wait for admin futures and raise one clear error listing every failure."""
    results, failures = {}, []
    for key, fut in futures.items():
        try:
            results[key] = fut.result()
        except KafkaException as exc:
            failures.append(f"{key}: {exc.args[0].str() if exc.args else exc}")
    if failures:
        raise KafkaUnavailable(f"{what} failed:\n  " + "\n  ".join(failures))
    return results


def _metadata(admin: AdminClient, timeout: float) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka ({exc.args[0].str() if exc.args else exc}). Start a local broker with "
            "`pipeline dev up`, or point at one with --bootstrap HOST:PORT / KAFKA_BOOTSTRAP."
        ) from None


def cluster_topics(admin: AdminClient, names: list[str] | None = None, timeout: float = 15) -> dict[str, ClusterTopic]:
    """Topics on the cluster (all non-internal ones, or just `names`) with partitions, replication and config."""
    metadata = _metadata(admin, timeout)
    wanted = [
        t for t in metadata.topics
        if not t.startswith("__") and (names is None or t in names)
    ]
    if not wanted:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in wanted]
    configs = _resolve(admin.describe_configs(resources, request_timeout=timeout), "describe configs")
    found = {}
    for resource, entries in configs.items():
        meta = metadata.topics[resource.name]
        replicas = {len(p.replicas) for p in meta.partitions.values()}
        found[resource.name] = ClusterTopic(
            name=resource.name,
            partitions=len(meta.partitions),
            replication=max(replicas) if replicas else 0,
            config={k: e.value for k, e in entries.items() if e.value is not None},
        )
    return found


def require_topics(topology: Topology, names: list[str]) -> None:
    """KafkaUnavailable, saying to run `pipeline topics apply`, when any of `names` is not on the cluster."""
    found = _metadata(admin_client(topology), 15).topics
    missing = sorted(n for n in set(names) if n not in found or found[n].error is not None)
    if missing:
        raise KafkaUnavailable(f"topic(s) {', '.join(missing)} not on the cluster at {topology.kafka.bootstrap}: "
                               f"run `pipeline -c {topology.source} topics apply`")


def plan(topology: Topology, existing: dict[str, ClusterTopic]) -> list[Action]:
    """What it takes to make the cluster match topics.yaml (nothing is ever deleted)."""
    actions = []
    for want in topology.resolved_topics():
        have = existing.get(want.name)
        if have is None:
            actions.append(Action(
                "create", want.name, _describe(want),
                partitions=want.partitions, replication=want.replication, config=want.config,
            ))
            continue
        actions.extend(_drift(want, have))
    return actions


def _describe(topic: ResolvedTopic) -> str:
    config = ", ".join(f"{k}={v}" for k, v in sorted(topic.config.items()))
    return f"partitions={topic.partitions} replication={topic.replication}" + (f" {config}" if config else "")


def _drift(want: ResolvedTopic, have: ClusterTopic) -> list[Action]:
    actions = []
    if want.partitions > have.partitions:
        actions.append(Action(
            "add-partitions", want.name, f"partitions {have.partitions} -> {want.partitions}",
            partitions=want.partitions,
        ))
    elif want.partitions < have.partitions:
        actions.append(Action(
            "drift", want.name,
            f"partitions: file says {want.partitions}, cluster has {have.partitions} "
            "(Kafka cannot remove partitions; raise the file's count)",
            fixable=False,
        ))
    if want.replication != have.replication:
        actions.append(Action(
            "drift", want.name,
            f"replication: file says {want.replication}, cluster has {have.replication} "
            "(change it with a partition reassignment, not with this tool)",
            fixable=False,
        ))
    changed = {k: v for k, v in want.config.items() if have.config.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {have.config.get(k)} -> {v}" for k, v in sorted(changed.items()))
        actions.append(Action("alter-config", want.name, detail, config=changed))
    return actions


def apply(admin: AdminClient, actions: list[Action], fix: bool, timeout: float = 30) -> list[Action]:
    """Create missing topics; with `fix`, also add partitions and alter configs. Returns what was done."""
    done: list[Action] = []
    creates = [a for a in actions if a.kind == "create"]
    if creates:
        new = [NewTopic(a.topic, num_partitions=a.partitions, replication_factor=a.replication, config=a.config)
               for a in creates]
        _resolve(admin.create_topics(new, request_timeout=timeout), "create topics")
        done += creates
    if not fix:
        return done
    grows = [a for a in actions if a.kind == "add-partitions"]
    if grows:
        _resolve(admin.create_partitions([NewPartitions(a.topic, a.partitions) for a in grows],
                                         request_timeout=timeout), "add partitions")
        done += grows
    alters = [a for a in actions if a.kind == "alter-config"]
    if alters:
        resources = [
            ConfigResource(ResourceType.TOPIC, a.topic, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in a.config.items()
            ])
            for a in alters
        ]
        _resolve(admin.incremental_alter_configs(resources, request_timeout=timeout), "alter configs")
        done += alters
    return done



def create_missing(topology: Topology) -> list[Action]:
    """Create the topology's topics that the cluster lacks (`pipeline topics apply` without --fix); what it did."""
    client = admin_client(topology)
    return apply(client, plan(topology, cluster_topics(client, list(topology.topics))), fix=False)
