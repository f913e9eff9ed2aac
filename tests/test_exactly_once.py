"""Exactly-once between stages on the real broker: SIGKILLs of every stage and a broker restart under load, a
fenced zombie (SIGSTOP past its session), and `pipeline consume --uncommitted` showing what readers never see."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

from pipeline.avro.codecs import codec_for
from pipeline.config import Topology, load_topology
from pipeline.kafka.clients import producer
from pipeline.kafka.consume import consume
from pipeline.kafka.dlq import dead_letters
from pipeline.runtime.stage import Incoming, load_stage
from pipeline.runtime.supervisor import spawn, worker_command
from stages.store import point_id
from tests.conftest import lag, restart_until, run_cli, start_stage, stop_all, stored_points, wait_for, write_topology
from tests.test_chaos import _restart_broker

TOPICS = ["sockets and servers", "regular expressions", "JSON files", "threads and locks", "square roots", "paths"]
INTERMEDIATE = ("preprocess", "embed", "classify")  # the stages whose outputs other readers see


def _docs(count: int, prefix: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"doc_id": f"{prefix}{i}", "text": f"Note {i} is about {rng.choice(TOPICS)}. It was written {i % 97} "
             "days ago."} for i in range(count)]


def _exactly_once(folder: Path, kafka: str, **stage_changes: object) -> tuple[Path, Topology]:
    """A test topology whose every stage runs with delivery: exactly-once (plus `stage_changes` for each)."""
    path, _ = write_topology(folder, kafka)
    raw = yaml.safe_load(path.read_text())
    for spec in raw["stages"].values():
        spec.update(delivery="exactly-once", **stage_changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topo = load_topology(path)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    return path, topo


def _expected(topo: Topology, docs: list[dict]) -> set[tuple[str, int]]:
    pre = load_stage(topo, "preprocess")
    pre.setup()
    full = [{"title": None, "source": None, "metadata": {}, **d} for d in docs]
    return {(p["doc_id"], p["passage_index"])
            for r in pre.process([Incoming(d, None, "t", 0, 0, 0) for d in full]) for p in r}


def _produce(path: Path, topo: Topology, docs: list[dict], folder: Path, name: str) -> None:
    source = folder / f"{name}.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    done = run_cli("-c", str(path), "produce", "-t", topo.stages["preprocess"].input, str(source))
    assert done.returncode == 0, done.stderr


def _read(topo: Topology, topic: str, uncommitted: bool = False) -> Counter:
    """(doc_id, passage_index) -> how many times a reader sees it on `topic`."""
    return Counter((r.value["doc_id"], r.value["passage_index"])
                   for r in consume(topo, topic, from_beginning=True, exit_at_end=True, uncommitted=uncommitted))


def _topic(topo: Topology, stage: str) -> str:
    return topo.stages[stage].output


def _assert_exactly_once(topo: Topology, expected: set[tuple[str, int]]) -> dict[str, int]:
    """Every intermediate topic holds each expected passage exactly once for a read_committed reader; returns
    how many more records the raw log holds per topic (aborted transactions)."""
    aborted = {}
    for stage in INTERMEDIATE:
        topic = _topic(topo, stage)
        seen = _read(topo, topic)
        duplicates = {k: n for k, n in seen.items() if n > 1}
        assert not duplicates, f"{topic}: {len(duplicates)} passages seen more than once, e.g. " \
                               f"{list(duplicates.items())[:3]}"
        assert set(seen) == expected, f"{topic}: {len(expected - set(seen))} missing, {len(set(seen) - expected)} extra"
        aborted[topic] = sum(_read(topo, topic, uncommitted=True).values()) - len(seen)
    return aborted


def test_kills_of_every_stage_and_a_broker_restart_leave_no_duplicates(kafka: str, tmp_path: Path) -> None:
    path, topo = _exactly_once(tmp_path, kafka)
    docs = _docs(600, "k", 13)
    expected = _expected(topo, docs)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {name: start_stage(path, name, logs) for name in topo.stages}
    rng = random.Random(7)
    victims = list(topo.stages)
    rng.shuffle(victims)
    broker_restarted = False
    try:
        for step, victim in enumerate(victims):  # each stage is killed once, at a random moment under load
            _produce(path, topo, docs[step::len(victims)], tmp_path, f"chunk{step}")
            time.sleep(rng.uniform(2, 6))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            if step == 1:
                broker_restarted = _restart_broker()
            procs[victim] = start_stage(path, victim, logs)  # the same replica: its init fences the killed one

        restarts = restart_until(lambda: lag(topo) == 0 and len(_read(topo, _topic(topo, "classify"))) >= len(expected),
                                 procs, path, logs, 420, every=2)
        assert lag(topo) == 0, "the pipeline did not catch up within the time limit"
    finally:
        stop_all(procs)

    for name in topo.stages:
        assert dead_letters(topo, name) == [], f"{name} dead-lettered good input"
    aborted = _assert_exactly_once(topo, expected)
    stored = set(stored_points(topo.stages["store"].options["path"]))
    assert stored == {point_id(d, i) for d, i in expected}
    print(f"exactly-once under kills: {len(docs)} documents, {len(expected)} passages, SIGKILLs: {victims}, broker "
          f"restarted: {broker_restarted}, other restarts: {restarts}; records of aborted transactions in the "
          f"raw log (never read): {aborted}")


def test_a_fenced_zombie_commits_nothing(kafka: str, tmp_path: Path) -> None:
    """Two preprocess workers; one is frozen (SIGSTOP) past its session while its transaction is open, its
    partitions move to the other, then it resumes: its transaction is refused and no passage is doubled."""
    path, topo = _exactly_once(tmp_path, kafka, commit_interval_ms=3000)  # a transaction is almost always open
    docs = _docs(1200, "z", 17)
    expected = _expected(topo, docs)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {f"preprocess-{i}": spawn(worker_command("preprocess", i, path, None, "--loglevel", "info"),
                                      logs / f"preprocess-{i}.log", new_session=False) for i in range(2)}
    zombie = procs["preprocess-0"]
    stop = threading.Event()

    def feed() -> None:  # steady load throughout, so both workers have open transactions at any moment
        for n, start in enumerate(range(0, len(docs), 40)):
            _produce(path, topo, docs[start:start + 40], tmp_path, f"feed{n}")
            if stop.wait(0.5):
                return

    try:
        wait_for(lambda: all("assigned" in (logs / f"{n}.log").read_text() for n in procs), 120,
                 "both workers to own partitions", procs, logs)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(4)
        zombie.send_signal(signal.SIGSTOP)
        time.sleep(topo.kafka.session_timeout_s + 8)  # the group and the transaction coordinator give up on it
        zombie.send_signal(signal.SIGCONT)
        feeder.join(120)
        stop.set()
        deadline = time.monotonic() + 180
        exited = None
        while time.monotonic() < deadline:
            if zombie.poll() is not None and exited is None:  # fenced for good: restarted, as Kubernetes would
                exited = zombie.returncode
                procs["preprocess-0"] = spawn(worker_command("preprocess", 0, path, None, "--loglevel", "info"),
                                              logs / "preprocess-0.log", new_session=False)
            if lag(topo, ["preprocess"]) == 0 and len(_read(topo, _topic(topo, "preprocess"))) >= len(expected):
                break
            time.sleep(1)
    finally:
        stop.set()
        stop_all(procs)
    zombie_log = (logs / "preprocess-0.log").read_text()
    refused = "transaction aborted" in zombie_log or "fenced" in zombie_log
    assert refused, f"the zombie's transaction was not refused:\n{zombie_log[-3000:]}"
    seen = _read(topo, _topic(topo, "preprocess"))
    duplicates = {k: n for k, n in seen.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} passages seen more than once"
    assert set(seen) == expected
    print(f"zombie: exit status {exited}; records of aborted transactions in the raw log: "
          f"{sum(_read(topo, _topic(topo, 'preprocess'), uncommitted=True).values()) - len(seen)}")


def test_consume_uncommitted_shows_what_read_committed_hides(kafka: str, tmp_path: Path) -> None:
    path, topo = write_topology(tmp_path, kafka)
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    topic = topo.stages["preprocess"].input
    codec = codec_for(topo, topic)
    kafka_producer = producer(topo, **{"transactional.id": f"test-{tmp_path.name}"})
    kafka_producer.init_transactions(30)
    for n, end in enumerate((kafka_producer.abort_transaction, kafka_producer.commit_transaction)):
        kafka_producer.begin_transaction()
        for i in range(3):
            doc = {"doc_id": f"{'aborted' if n == 0 else 'committed'}{i}", "text": "Some text."}
            kafka_producer.produce(topic, key=doc["doc_id"].encode(), value=codec.encode(doc))
        assert kafka_producer.flush(30) == 0  # in the log before the abort (an abort drops what is unsent)
        end(30)

    def ids(*extra: str) -> list[str]:
        done = run_cli("-c", str(path), "consume", topic, "--from-beginning", "-e", *extra)
        assert done.returncode == 0, done.stderr
        return sorted(json.loads(line)["doc_id"] for line in done.stdout.splitlines() if line.strip())

    assert ids() == ["committed0", "committed1", "committed2"]
    assert ids("--uncommitted") == sorted([f"aborted{i}" for i in range(3)] + [f"committed{i}" for i in range(3)])
