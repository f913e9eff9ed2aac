"""SIGTERM: a stage finishes the batch in hand, commits it, and exits cleanly; nothing committed lacks outputs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from pipeline.kafka.offsets import stage_lag, topic_end_offsets
from tests.conftest import ROOT, lag, run_cli, start_stage, wait_for


def _committed(topo, stage: str) -> int:
    return sum(r.committed or 0 for r in stage_lag(topo, stage))


def test_sigterm_finishes_the_batch_and_commits(topology, tmp_path: Path) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    # The whole sample (416 passages), so the embed stage still has work left when SIGTERM comes.
    docs = [json.loads(line) for line in (ROOT / "stages/data/sample.jsonl").read_text().splitlines()]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert run_cli("-c", str(path), "produce", "-t", topo.stages["preprocess"].input, str(source)).returncode == 0
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {"preprocess": start_stage(path, "preprocess", logs)}
    wait_for(lambda: lag(topo, ["preprocess"]) == 0, 180, "preprocess", procs, logs)
    procs["embed"] = start_stage(path, "embed", logs)
    try:
        wait_for(lambda: _committed(topo, "embed") > 0, 180, "embed's first commit", procs, logs)
        before = _committed(topo, "embed")
        procs["embed"].send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert procs["embed"].wait(60) == 0
        assert time.monotonic() - started < 30
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    after = _committed(topo, "embed")
    outputs = sum(topic_end_offsets(topo, topo.stages["embed"].output).values())
    assert after >= before
    assert outputs >= after  # every committed passage has its vector on the broker (one output per input)
    assert lag(topo, ["embed"]) > 0  # it stopped mid-stream, so this really tested a shutdown with work left
