"""A rebalance in the middle of a batch: a second replica joins while the first holds one. Nothing is lost, and no
commit ever passes a batch whose outputs the broker had not acknowledged."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml

from pipeline.config import load_topology
from pipeline.kafka.consume import consume
from pipeline.kafka.offsets import stage_lag
from pipeline.runtime.supervisor import spawn, terminate, worker_command
from tests.conftest import run_cli, wait_for, write_topology

DOCS = 240


def _topology(folder: Path, kafka: str) -> tuple[Path, object]:
    path, topo = write_topology(folder, kafka, partitions=2)
    raw = yaml.safe_load(path.read_text())
    prefix = raw["stages"]["preprocess"]["group"].removesuffix("pipeline-preprocess")
    raw["topics"][f"{prefix}slow.out"] = {"value_schema": "pipeline.docs.RawDocument", "key_field": "doc_id"}
    raw["stages"]["slow"] = {
        "impl": "tests.slow_stage:SlowStage", "input": raw["stages"]["preprocess"]["input"],
        "output": f"{prefix}slow.out", "dead_letter": raw["stages"]["preprocess"]["dead_letter"],
        "group": f"{prefix}slow", "web_port": raw["stages"]["preprocess"]["web_port"] + 50,
        "batch": {"max_records": 20, "max_wait_ms": 50},
        "options": {"delay_s": 1.0, "marker": str(folder / "busy")},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, load_topology(path)


def test_a_replica_joining_mid_batch_loses_nothing_and_commits_nothing_early(kafka: str, tmp_path: Path) -> None:
    path, topo = _topology(tmp_path, kafka)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(f'{{"doc_id": "r{i}", "text": "document {i}"}}\n' for i in range(DOCS)))
    spec = topo.stages["slow"]
    assert run_cli("-c", str(path), "produce", "-t", spec.input, str(source)).returncode == 0
    logs = tmp_path / "logs"
    procs = {}
    samples: list[tuple[int, dict[int, int]]] = []  # (ms when read, committed offset per partition)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rows = stage_lag(topo, "slow")
            seen = int(time.time() * 1000)
            samples.append((seen, {r.partition: r.committed for r in rows if r.committed is not None}))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        procs["slow-0"] = spawn(worker_command("slow", 0, path, None, "--loglevel", "info"), logs / "slow-0.log",
                                new_session=False)
        sampler.start()
        wait_for(lambda: (tmp_path / "busy").exists(), 120, "the first replica to hold a batch", procs, logs)
        procs["slow-1"] = spawn(worker_command("slow", 1, path, None, "--loglevel", "info"), logs / "slow-1.log",
                                new_session=False)
        wait_for(lambda: all(r.committed == r.end for r in stage_lag(topo, "slow")), 180, "lag 0", procs, logs)
    finally:
        done.set()
        terminate(procs.values(), 60)
    codes = {name: proc.returncode for name, proc in procs.items()}
    first, second = (logs / "slow-0.log").read_text(), (logs / "slow-1.log").read_text()
    assert codes == {"slow-0": 0, "slow-1": 0}, first[-2000:] + second[-2000:]
    assert "assigned" in second, second[-2000:]
    # The first replica gave a partition up while it held batches: they were finished and committed first.
    assert "in flight finished and were committed" in first, first[-3000:]

    inputs = {(r.partition, r.offset): r.value["doc_id"] for r in consume(topo, spec.input, from_beginning=True,
                                                                       exit_at_end=True)}
    first_out: dict[str, int] = {}  # doc id -> when its first output was produced
    for r in consume(topo, spec.output, from_beginning=True, exit_at_end=True):
        first_out[r.value["doc_id"]] = min(first_out.get(r.value["doc_id"], r.timestamp_ms), r.timestamp_ms)
    assert len(inputs) == DOCS and set(first_out) == set(inputs.values())  # nothing lost

    # Whenever an offset was seen committed, every record before it already had its output on the broker.
    early = [(seen, p, c, o) for seen, committed in samples for p, c in committed.items()
             for (q, o), doc in inputs.items() if q == p and o < c and first_out[doc] > seen]
    assert not early, early[:5]
    assert len({tuple(sorted(c.items())) for _, c in samples}) > 3  # the commits moved while sampled
