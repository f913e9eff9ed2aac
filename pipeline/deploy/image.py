"""The pipeline's container image built with podman (`pipeline k8s image`), on machines without a registry too."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.errors import PipelineError
from pipeline.paths import cache_home

IMAGE = "localhost/kafka-ai-pipeline"  # k8s/overlays/local names it (tag = the variant)
VARIANTS = ("cpu", "cuda")
PYTORCH_INDEX_HOST = "download.pytorch.org"  # the Dockerfile's default torch index for both variants
# Settings of the host's pip that the build's pip needs to reach the same index (a mirror, a proxy's CA).
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "cert", "timeout")
# What the stand-in base image holds: what the Dockerfile uses of python:*-slim (python, venv, TLS roots).
STAND_IN_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")


def engine() -> str:
    """The podman executable, or a message saying how to install it."""
    found = shutil.which("podman")
    if not found:
        raise PipelineError("podman not found: install it (Debian: apt-get install podman runc; `.ci/install` does), "
                            "then see k8s/overlays/local/containers.conf for the settings a VM may need")
    return found


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; a failure raises with podman's own message."""
    result = subprocess.run([engine(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise PipelineError(f"podman {' '.join(args[:3])} failed: {result.stderr.strip()[-1500:]}")
    return result


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def image_size(name: str) -> int:
    """Bytes of a local image."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def base_image(dockerfile: Path) -> str:
    """The full name of the Dockerfile's first base image, its ARG defaults filled in (docker.io/library/... for
    an official image, as podman names it after a pull)."""
    text = dockerfile.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    match = re.search(r"^FROM\s+(\S+)", text, flags=re.M)
    if not match:
        raise PipelineError(f"{dockerfile}: no FROM line")
    name = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), match.group(1))
    first = name.split("/")[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    return name if "." in first or ":" in first or first == "localhost" else f"docker.io/{name}"


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        if path.is_file():
            found = re.search(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s", path.read_text(), flags=re.M)
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def build_stand_in(name: str, say: Callable[[str], None]) -> None:
    """Make `name` from Debian's archive with debootstrap: python3 and venv on the suite the tag names (bookworm
    for python:3.11-slim-bookworm), for machines that reach apt's mirror but no container registry."""
    suite = name.rsplit("-", 1)[-1] if "-" in name.rsplit(":", 1)[-1] else "bookworm"
    if not shutil.which("debootstrap"):
        raise PipelineError(f"{name} cannot be pulled and debootstrap is missing to build a stand-in: "
                            "apt-get install debootstrap (`.ci/install` does), or pull the image where a registry "
                            "is reachable and `podman load` it here")
    if os.geteuid() != 0:
        raise PipelineError(f"{name} cannot be pulled; building a stand-in with debootstrap needs root")
    mirror = debian_mirror()
    say(f"{name} cannot be pulled: building a stand-in from Debian {suite} ({mirror}) with debootstrap")
    with tempfile.TemporaryDirectory(prefix="pipeline-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(STAND_IN_PACKAGES)}",
                                 suite, str(root), mirror], capture_output=True, text=True)
        if result.returncode != 0:
            raise PipelineError(f"debootstrap {suite} from {mirror} failed: {result.stdout[-1500:]}"
                                f"{result.stderr[-1500:]}")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        podman("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', str(archive), name)


def ensure_base(name: str, say: Callable[[str], None]) -> str:
    """Have the base image locally: already there, pulled, or built from Debian's archive; says which."""
    if image_exists(name):
        return "present"
    try:
        pulled = podman("pull", "--quiet", name, check=False, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        pulled = False
    if pulled:
        return "pulled"
    build_stand_in(name, say)
    return "built from Debian's archive (a stand-in: the registry could not be reached)"


def resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def pip_settings() -> dict[str, str]:
    """The host pip's effective index and TLS settings (files and PIP_* variables), from `pip config list`."""
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, str] = {}
    for line in listed.splitlines():
        key, sep, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if sep and name in PIP_KEYS and name not in found:
            found[name] = value.strip().strip("'\"")
    return found


@dataclass
class BuildPlan:
    """What `podman build` is given: build arguments, read-only mounts, and notes for the user."""

    args: list[str]
    notes: list[str]
    pip_conf: str | None  # a pip.conf for the build's pip (index, CA), when the host's pip has such settings


def plan_build(variant: str, torch_index: str | None, tag: str) -> BuildPlan:
    """The build's arguments: the variant, torch's index (the Dockerfile's default unless it is unreachable, then
    the host pip's index), and the host's pip index and CA settings passed through only when it has them."""
    if variant not in VARIANTS:
        raise PipelineError(f"--variant must be one of {', '.join(VARIANTS)}, not '{variant}'")
    notes: list[str] = []
    settings = pip_settings()
    if not torch_index and not resolves(PYTORCH_INDEX_HOST):
        torch_index = settings.get("index-url", "https://pypi.org/simple")
        notes.append(f"{PYTORCH_INDEX_HOST} is unreachable: torch comes from {torch_index}"
                     + (" (PyPI's torch is the CUDA build: the image is several GB)" if "pypi.org" in torch_index
                        else ""))
    args = ["--network", "host", "--build-arg", f"VARIANT={variant}", "-t", tag]
    if torch_index:
        args += ["--build-arg", f"TORCH_INDEX={torch_index}"]
    conf = None
    if settings:
        conf = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        cert = settings.get("cert")
        if cert and Path(cert).is_file():
            args += ["-v", f"{cert}:{cert}:ro"]
        notes.append(f"the host's pip settings go to the build's pip: {', '.join(sorted(settings))}")
    return BuildPlan(args, notes, conf)


CONTEXT_LABEL = "kafka-ai-pipeline/context-sha256"  # what an image was built from: build() skips a same build


def context_digest(root: Path, args: list[str]) -> str:
    """A digest of what a build reads: the Dockerfile, the files .dockerignore lets in, the build arguments."""
    ignore = root / ".dockerignore"
    allowed = [line[1:].strip("/") for line in ignore.read_text().splitlines() if line.startswith("!")] \
        if ignore.is_file() else ["."]
    digest = hashlib.sha256("\0".join(args).encode())
    for name in ["Dockerfile", *allowed]:
        path = root / name
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" not in file.parts and file.suffix != ".pyc" and file.is_file():
                digest.update(f"{file.relative_to(root)}\0".encode() + file.read_bytes() + b"\0")
    return digest.hexdigest()


def image_label(name: str, label: str) -> str | None:
    found = podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', name, check=False)
    return found.stdout.strip() or None if found.returncode == 0 else None


@dataclass
class Built:
    tag: str
    seconds: float
    size: int
    base: str
    up_to_date: bool  # built before from the same files and arguments: not built again
    steps: int = 0  # build steps after FROM
    from_cache: int = 0  # of those, how many the layer cache answered


def build(root: Path, variant: str = "cpu", tag: str | None = None, torch_index: str | None = None,
          say: Callable[[str], None] = print, step: Callable[[str], None] = lambda _: None,
          log: Path | None = None, force: bool = False) -> Built:
    """Build the Dockerfile at `root` into IMAGE:VARIANT (or `tag`); `step` hears each build step as it starts.
    An image built from the same files and arguments (its CONTEXT_LABEL) is kept as it is, unless `force`."""
    tag = tag or f"{IMAGE}:{variant}"
    plan = plan_build(variant, torch_index, tag)  # first: it refuses a bad variant before any base is built
    dockerfile = root / "Dockerfile"
    started = time.monotonic()
    how = ensure_base(base_image(dockerfile), say)
    digest = context_digest(root, plan.args)
    if not force and image_exists(tag) and image_label(tag, CONTEXT_LABEL) == digest:
        return Built(tag, time.monotonic() - started, image_size(tag), how, up_to_date=True)
    for note in plan.notes:
        say(note)
    with tempfile.TemporaryDirectory(prefix="pipeline-build-") as tmp:
        args = [*plan.args, "--label", f"{CONTEXT_LABEL}={digest}"]
        if plan.pip_conf:
            conf = Path(tmp) / "pip.conf"
            conf.write_text(plan.pip_conf)
            args += ["-v", f"{conf}:/etc/pip.conf:ro"]
        log = log or cache_home() / "k8s-image" / f"build-{variant}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        steps, cached = 0, 0
        with log.open("w") as sink:
            proc = subprocess.Popen([engine(), "build", *args, "-f", str(dockerfile), str(root)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                if line.startswith("STEP "):
                    steps += not re.match(r"STEP \d+/\d+: FROM ", line)
                    step(line.strip())
                elif line.startswith("--> Using cache"):
                    cached += 1
            code = proc.wait()
        if code != 0:
            raise PipelineError(f"podman build failed (exit {code}; the whole log: {log}); its last lines:\n"
                                + "".join(log.read_text().splitlines(keepends=True)[-25:]))
    return Built(tag, time.monotonic() - started, image_size(tag), how, False, steps, cached)
