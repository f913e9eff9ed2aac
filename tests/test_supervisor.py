"""`pipeline run`'s supervisor: a worker that fails is restarted with exponential backoff (1 s, 2 s, ...);
a clean exit or Ctrl-C/SIGTERM stops them all."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from pipeline.runtime.supervisor import Supervisor
from tests.conftest import ROOT


def _failing(count: Path, fails: int) -> list[str]:
    """A worker that records its start time and fails (status 70) its first `fails` runs, then keeps running."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        count = Path({str(count)!r})
        starts = count.read_text().split() if count.exists() else []
        count.write_text(" ".join([*starts, str(time.monotonic())]))
        if len(starts) < {fails}:
            sys.exit(70)
        time.sleep(60)
    """)
    return [sys.executable, "-c", script]


def test_a_failed_worker_is_restarted_with_backoff(tmp_path: Path) -> None:
    count = tmp_path / "starts"
    supervisor = Supervisor({"w": _failing(count, 3), "steady": [sys.executable, "-c", "import time; time.sleep(60)"]},
                            tmp_path / "logs", grace=5)
    supervisor.start()
    waiter = threading.Thread(target=supervisor.wait)
    waiter.start()
    try:
        deadline = time.monotonic() + 30
        while len(count.read_text().split() if count.exists() else []) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        steady = supervisor.procs["steady"]
    finally:
        supervisor.request_stop()
        waiter.join(5)
        codes = supervisor.stop()
    starts = [float(s) for s in count.read_text().split()]
    assert len(starts) == 4 and supervisor.restarts == {"w": 3, "steady": 0}
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    for gap, backoff in zip(gaps, [1, 2, 4]):  # 1 s doubling (plus the start of a Python process)
        assert backoff <= gap < backoff + 2, gaps
    assert supervisor.procs["steady"] is steady  # the others were left alone
    assert codes["steady"] == -signal.SIGTERM and codes["w"] == -signal.SIGTERM


def test_backoff_doubles_to_30_s_and_resets_after_a_stable_run() -> None:
    supervisor = Supervisor({}, backoff=1.0, max_backoff=30.0, stable_after=600.0)
    assert [supervisor._backoff("w", ran=5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert supervisor._backoff("w", ran=600) == 1  # it had run fine for 10 minutes: start over
    assert supervisor._backoff("w", ran=5) == 2
    assert supervisor._backoff("other", ran=5) == 1


def test_sigterm_stops_every_worker_and_a_clean_exit_stops_the_others(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        from pipeline.runtime.supervisor import Supervisor
        pids = sys.argv[2]
        sleep = [sys.executable, "-c", f"import os, time; open({pids!r}, 'a').write(f'{{os.getpid()}} '); time.sleep(60)"]
        commands = {"a": sleep, "b": sleep}
        if sys.argv[1] == "clean":
            commands["c"] = [sys.executable, "-c", "import time; time.sleep(2)"]
        sys.exit(Supervisor(commands, grace=5).run())
    """)
    for mode, status in (("sigterm", 0), ("clean", 1)):
        pids = tmp_path / f"{mode}.pids"
        proc = subprocess.Popen([sys.executable, "-c", code, mode, str(pids)], cwd=ROOT)
        deadline = time.monotonic() + 20
        while len(pids.read_text().split() if pids.exists() else []) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        if mode == "sigterm":
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == status, mode
        for pid in map(int, pids.read_text().split()):  # no worker left behind
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
