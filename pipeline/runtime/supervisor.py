"""Stage workers as child processes: one way to start a worker (`spawn`) and to stop workers (`terminate`: SIGTERM,
then SIGKILL after a grace period), used by `pipeline run`, the demo, the benchmark and the tests; and the
Supervisor that restarts a worker that fails."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("pipeline.supervisor")


def worker_command(stage: str, replica: int = 0, config: str | Path | None = None, bootstrap: str | None = None,
                   *args: str) -> list[str]:
    """`python -m pipeline [--config C] [--bootstrap B] run STAGE --replica N ARGS...`."""
    cmd = [sys.executable, "-m", "pipeline"]
    if config:
        cmd += ["--config", str(config)]
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    return [*cmd, "run", stage, "--replica", str(replica), *args]


def spawn(command: list[str], log: Path | None = None, new_session: bool = True,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` with stdout and stderr appended to `log` (or inherited), stdin closed, `env` added to the
    environment; in its own session so a Ctrl-C at the terminal reaches the supervisor only, which then stops
    its workers in order."""
    out = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, start_new_session=new_session,
                                env={**os.environ, **env} if env else None)
    finally:
        if out:
            out.close()  # the child holds its own copy


def terminate(procs: Iterable[subprocess.Popen], grace: float = 60.0) -> None:
    """SIGTERM every process still running (a worker finishes its batch and commits), wait up to `grace`
    seconds for all of them, then SIGKILL whatever is left."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Supervisor:
    """Starts named commands and restarts one that fails by itself (non-zero exit) after an exponential
    backoff, like Kubernetes' CrashLoopBackOff; `stop()` ends them all; `wait()` returns when stop was asked
    or a worker exited cleanly by itself."""

    def __init__(self, commands: dict[str, list[str]], log_dir: Path | None = None, grace: float = 60.0,
                 backoff: float = 1.0, max_backoff: float = 30.0, stable_after: float = 600.0) -> None:
        self.commands = commands
        self.log_dir = log_dir
        self.grace = grace
        self.backoff, self.max_backoff, self.stable_after = backoff, max_backoff, stable_after
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {name: 0 for name in commands}
        self._started: dict[str, float] = {}
        self._delay: dict[str, float] = {}
        self._due: dict[str, float] = {}  # worker -> when to start it again
        self._stop = False

    def start(self) -> None:
        for name in self.commands:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        self.procs[name] = spawn(self.commands[name], self.log_dir / f"{name}.log" if self.log_dir else None)
        self._started[name] = time.monotonic()

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def wait(self) -> str | None:
        """Block until stop is requested (None) or a worker exits with status 0 by itself (its name). A worker
        that fails is started again after 1 s, then 2, 4, ... up to 30 s; the delay resets once a worker has
        run for `stable_after` seconds."""
        while not self._stop:
            now = time.monotonic()
            for name, proc in self.procs.items():
                if name in self._due:
                    if now >= self._due[name]:
                        del self._due[name]
                        self.restarts[name] += 1
                        log.warning("restarting worker %s (restart %d)", name, self.restarts[name])
                        self._spawn(name)
                    continue
                code = proc.poll()
                if code is None:
                    continue
                if code == 0:
                    return name
                ran = now - self._started[name]
                delay = self._backoff(name, ran)
                self._due[name] = now + delay
                log.error("worker %s exited with status %s after %.0fs; restarting it in %.0fs", name, code, ran, delay)
            time.sleep(0.2)
        return None

    def _backoff(self, name: str, ran: float) -> float:
        """Seconds to wait before restarting `name`, which failed after running `ran` seconds."""
        delay = self.backoff if ran >= self.stable_after else self._delay.get(name, self.backoff)
        self._delay[name] = min(delay * 2, self.max_backoff)
        return delay

    def stop(self) -> dict[str, int]:
        self._due.clear()
        terminate(self.procs.values(), self.grace)
        return {name: proc.returncode for name, proc in self.procs.items()}

    def run(self) -> int:
        """Start, restart failed workers, until Ctrl-C/SIGTERM or a worker's clean exit; then stop all. 0 only
        for a requested stop."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self.start()
        ended = self.wait()
        if ended:
            log.error("worker %s exited by itself with status 0; stopping the others", ended)
        self.stop()
        return 1 if ended else 0
