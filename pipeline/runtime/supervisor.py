"""Runs stage workers as child processes, and stops them together (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("pipeline.supervisor")


def worker_command(stage: str, replica: int, config: str | None, bootstrap: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline"]
    if config:
        cmd += ["--config", config]
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    return [*cmd, "run", stage, "--replica", str(replica)]


class Supervisor:
    """Starts named commands; `stop()` ends them all; `wait()` returns when one dies or stop was asked."""

    def __init__(self, commands: dict[str, list[str]], log_dir: Path | None = None, grace: float = 60.0) -> None:
        self.commands = commands
        self.log_dir = log_dir
        self.grace = grace
        self.procs: dict[str, subprocess.Popen] = {}
        self._stop = False

    def start(self) -> None:
        for name, cmd in self.commands.items():
            out = None
            if self.log_dir:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def wait(self) -> str | None:
        """Block until stop is requested (None) or a worker exits by itself (its name)."""
        while not self._stop:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    return name
            time.sleep(0.2)
        return None

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {name: proc.returncode for name, proc in self.procs.items()}

    def run(self) -> int:
        """Start, wait for Ctrl-C/SIGTERM or a worker's death, stop all; 0 only for a requested stop."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self.start()
        died = self.wait()
        if died:
            log.error("worker %s exited with status %s; stopping the others", died, self.procs[died].returncode)
        self.stop()
        return 1 if died else 0
