"""The image and the rendered manifests on a real container engine: `pipeline k8s image`, `play` and `down` with
podman, the sample through every stage pod, a crashed embed container restarted, search from the store pod and
through the gateway pod, and the exact point set."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pipeline.config import Topology
from pipeline.deploy import image as k8s_image
from pipeline.kafka.offsets import stage_lag
from stages.store import point_id
from tests.conftest import ROOT, lag, run_cli, stored_points, write_topology
from tests.test_exactly_once import _read

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.container,
    pytest.mark.skipif(shutil.which("podman") is None,
                       reason="podman is not installed (`.ci/install` installs it on Debian): the image and "
                              "`pipeline k8s play` were not tested"),
]
SAMPLE = ROOT / "stages" / "data" / "sample.jsonl"
STAGES = ("preprocess", "embed", "classify", "store")


def _podman(*args: str) -> str:
    return k8s_image.podman(*args).stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    """The CPU image, built by `pipeline k8s image` (from the layer cache after the first build)."""
    built = run_cli("k8s", "image", timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    assert k8s_image.image_exists(f"{k8s_image.IMAGE}:cpu")
    return f"{k8s_image.IMAGE}:cpu"


def _overlay(folder: Path, claim: str) -> Path:
    """k8s/overlays/local with the store's claim renamed, so a test never touches a user's store volume."""
    overlay = folder / "overlay"
    shutil.copytree(ROOT / "k8s" / "overlays" / "local", overlay, ignore=shutil.ignore_patterns("generated"))
    for name in ("store-data.yaml", "store-volume.yaml"):
        path = overlay / name
        path.write_text(path.read_text().replace("pipeline-store-data", claim))
    return overlay


def _state(container: str) -> tuple[str, int]:
    status, restarts = _podman("container", "inspect", "--format", "{{.State.Status}} {{.RestartCount}}",
                               container).split()
    return status, int(restarts)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    logs = "\n".join(f"--- {s}\n{subprocess.run(['podman', 'logs', '--tail', '15', f'pipeline-{s}-pod-0-stage'], capture_output=True, text=True).stderr}"  # noqa: E501
                     for s in STAGES)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def _committed(topology: Topology, stage: str) -> int:
    return sum(row.committed or 0 for row in stage_lag(topology, stage))


@pytest.mark.timeout(1800)
def test_rendered_manifests_run_on_podman(image: str, kafka: str, nats_url: str, tmp_path: Path) -> None:
    path, topology = write_topology(tmp_path, kafka)
    claim = f"pipeline-store-data-{uuid.uuid4().hex[:8]}"
    overlay = _overlay(tmp_path, claim)
    env = {"PIPELINE_CACHE": str(tmp_path / "cache"), "NATS_URL": nats_url}
    cli = ("-c", str(path), "--bootstrap", kafka)
    played = run_cli(*cli, "k8s", "play", "--overlay", str(overlay), "--timeout", "600", env=env, timeout=700)
    try:
        assert played.returncode == 0, played.stdout + played.stderr
        for kind in ("KafkaTopic", "ScaledObject"):
            assert kind in played.stderr  # listed as not played, with what stands in
        assert "pipeline-gateway-pod-0-gateway" in played.stderr  # NATS answers: the gateway runs too
        for stage in STAGES:  # as in the cluster: uid 10001, read-only root, the claim on the store only
            container = f"pipeline-{stage}-pod-0-stage"
            user, readonly = _podman("container", "inspect", "--format",
                                     "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", container).split()
            assert (user.split(":")[0], readonly) == ("10001", "true")
            mounts = _podman("container", "inspect", "--format", "{{range .Mounts}}{{.Destination}} {{end}}",
                             container).split()
            assert {"/etc/pipeline", "/home/app", "/tmp"} <= set(mounts)
            assert ("/var/lib/pipeline" in mounts) == (stage == "store")

        sent = run_cli(*cli, "produce", "-t", topology.stages["preprocess"].input, str(SAMPLE))
        assert sent.returncode == 0, sent.stderr
        embedded = topology.stages["embed"].output
        _wait(lambda: _committed(topology, "embed") > 0, 600, "the embed pod's first commit")
        # Mid-stream: SIGKILL to the stage process, as the OOM killer or a crash would send it. (`podman kill`
        # counts as a stop by the user, after which podman 4.3 never restarts a container.)
        left = sum(row.lag for row in stage_lag(topology, "embed"))
        assert left > 0, "embed finished before the kill: nothing was tested"
        embed = "pipeline-embed-pod-0-stage"
        os.kill(int(_podman("container", "inspect", "--format", "{{.State.Pid}}", embed)), signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: _state(embed) == ("running", 1), 60, "podman to restart the embed container")
        restarted = time.monotonic()
        _wait(lambda: _committed(topology, "preprocess") >= 360 and lag(topology) == 0, 900,
              "every passage stored")
        print(f"\nembed killed with {left} passages left, running again after {restarted - killed:.1f} s, "
              f"everything stored {time.monotonic() - killed:.1f} s after the kill")

        searched = subprocess.run(["podman", "exec", "pipeline-store-pod-0-stage", "pipeline", "search",
                                   "open a network connection", "-k", "3"], capture_output=True, text=True,
                                  env={**os.environ, "COLUMNS": "200"})
        assert searched.returncode == 0, searched.stderr
        assert "networking" in searched.stderr, searched.stderr  # the table of hits (rich writes to stderr)
        asked = run_cli(*cli, "ask", "search", "open a network connection", "-k", "3", env=env)
        assert asked.returncode == 0 and '"hits"' in asked.stdout, asked.stdout + asked.stderr  # via the gateway pod
    finally:
        stopped = run_cli("k8s", "down", env=env, timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr  # every stage exited 0 within its grace
    assert stopped.stderr.count(" 0 ") >= len(STAGES), stopped.stderr

    passages = set(_read(topology, topology.stages["preprocess"].output))
    assert len(passages) >= 360
    points = stored_points(str(Path(_podman("volume", "inspect", "--format", "{{.Mountpoint}}", claim)) / "qdrant"))
    _podman("volume", "rm", claim)
    assert set(points) == {point_id(doc, index) for doc, index in passages}
    assert sum(_read(topology, embedded).values()) >= len(passages)
