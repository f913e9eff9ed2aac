"""What the dev broker and the dev servers share about their processes: ports, liveness, stopping by pid, logs."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def stop_pid(pid: int, timeout: float, whole_session: bool = False) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL the process (or its whole session: a script's children
    such as RabbitMQ's Erlang VM go with it)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL) if whole_session else os.kill(pid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that there is none yet."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log yet at {path})"
