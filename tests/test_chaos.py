"""Chaos on the real path: stage processes are killed with SIGKILL at random and restarted, and the broker is
restarted once, while a few thousand documents flow. At the end Qdrant holds exactly the expected points."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path


from pipeline.kafka.dlq import dead_letters
from pipeline.kafka.offsets import stage_lag
from pipeline.runtime.stage import Incoming, load_stage
from stages.store import point_id
from tests.conftest import SASL_USER, TEST_PORT, lag, restart_until, run_cli, start_stage, stop_all, stored_points

DOCS = 2000
TOPICS = ["sockets and servers", "regular expressions", "JSON files", "threads and locks", "square roots", "paths"]


def _docs() -> list[dict]:
    rng = random.Random(11)
    return [{"doc_id": f"c{i}", "text": f"Note {i} is about {rng.choice(TOPICS)}. It was written {i % 97} days ago."}
            for i in range(DOCS)]


def _restart_broker() -> bool:
    """Stop and start the dev broker the test session owns; False against an external cluster."""
    home = os.environ.get("PIPELINE_TEST_DEV_HOME")
    if home is None:
        return False
    env = {"PIPELINE_DEV_HOME": home, **SASL_USER}
    assert run_cli("dev", "down", "--port", str(TEST_PORT), env=env).returncode == 0
    time.sleep(2)
    started = run_cli("dev", "up", "--port", str(TEST_PORT), "--sasl", env=env)
    assert started.returncode == 0, started.stderr
    return True


def test_chaos_kills_and_broker_restart_lose_nothing(topology, tmp_path: Path) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    docs = _docs()
    pre = load_stage(topo, "preprocess")
    pre.setup()
    full = [{"title": None, "source": None, "metadata": {}, **d} for d in docs]
    expected = {point_id(p["doc_id"], p["passage_index"])
                for r in pre.process([Incoming(d, None, "t", 0, 0, 0) for d in full]) for p in r}
    chunks = [docs[i::4] for i in range(4)]

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    rng = random.Random(5)
    kills, broker_restarted = 0, False
    deadline = time.monotonic() + 480
    try:
        for step, chunk in enumerate(chunks):
            source = tmp_path / f"chunk{step}.jsonl"
            source.write_text("".join(json.dumps(d) + "\n" for d in chunk))
            done = run_cli("-c", str(path), "produce", "-t", topo.stages["preprocess"].input, str(source))
            assert done.returncode == 0, done.stderr
            time.sleep(rng.uniform(4, 8))
            victim = rng.choice(sorted(procs))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            if step == 1:
                broker_restarted = _restart_broker()
            procs[victim] = start_stage(path, victim, logs)
        restarts = restart_until(lambda: lag(topo) == 0 and sum(r.committed or 0 for r in stage_lag(topo, "store")),
                                 procs, path, logs, deadline - time.monotonic())
        assert lag(topo) == 0, "the pipeline did not catch up within the time limit"
    finally:
        stop_all(procs)

    for name in topo.stages:
        assert dead_letters(topo, name) == [], f"{name} dead-lettered good input"
    stored = set(stored_points(topo.stages["store"].options["path"]))
    print(f"chaos: {DOCS} documents, {len(expected)} passages, {kills} SIGKILLs, broker restarted: "
          f"{broker_restarted}, stages that exited and were restarted: {restarts}")
    assert len(stored - expected) == 0, "extra points"
    assert len(expected - stored) == 0, f"{len(expected - stored)} missing points"
