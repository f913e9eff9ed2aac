"""The stage test kit: run a stage in-process over plain dicts through its topics' real Avro codecs and the
runtime's real batch path (no Kafka), or on a real broker as a pytest fixture (`pytest_plugins =
["pipeline.testing"]`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.avro.codecs import codec_for
from pipeline.avro.schemas import AvroError
from pipeline.config import DEFAULT_CONFIG, Topology, load_topology
from pipeline.errors import PipelineError
from pipeline.kafka.dlq import read_headers
from pipeline.kafka.keys import record_key
from pipeline.kafka.sender import Barrier
from pipeline.runtime.batch import BatchHandler, Raw, Stopping
from pipeline.runtime.stage import Stage, load_stage
from pipeline.runtime.supervisor import spawn, terminate, worker_command

__all__ = ["StageProcess", "StageRun", "TestDeadLetter", "Tombstone", "run_stage", "start_stage_process"]


@dataclass(frozen=True)
class Tombstone:
    """An input with a null value under this key (a delete keyed by id), for run_stage's records."""

    key: str | bytes | None


@dataclass(frozen=True)
class TestDeadLetter:
    """A record the stage sent to its dead-letter topic: why, and the original bytes untouched."""

    __test__ = False  # not a pytest test class

    reason: str  # e.g. "empty-text", "stage-error", "bad-magic"
    message: str
    value: dict[str, Any] | None  # the input decoded with the input topic's codec; None when undecodable
    raw: bytes  # the original value bytes
    headers: dict[str, str]  # the error headers without their prefix: stage, reason, class, message, offset, ...


@dataclass
class StageRun:
    """What a stage produced for its inputs: output records (decoded with the output topic's codec, in order)
    and dead letters."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[TestDeadLetter] = field(default_factory=list)
    output_keys: list[bytes | None] = field(default_factory=list)  # the Kafka key of each output

    @property
    def reasons(self) -> list[str]:
        """The dead letters' reasons, in input order."""
        return [d.reason for d in self.dead_letters]


class _MemorySender:
    """Stands in for the Kafka Sender: keeps what the batch handler produces; every record is 'acknowledged'."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, tag: Any = None) -> None:
        self.records.append((topic, value, key, headers))

    def flush(self, timeout: float = 30.0) -> Barrier:
        return Barrier()


def _single_object(topology: Topology) -> Topology:
    """The topology with single-object framing: the kit needs no schema registry."""
    if topology.framing == "single-object":
        return topology
    copied = topology.model_copy(deep=True)
    copied.framing = "single-object"
    return copied


def run_stage(
    stage: str | Stage,
    records: list[dict[str, Any] | bytes | Tombstone],
    config: str | Path | Topology = DEFAULT_CONFIG,
    options: dict[str, Any] | None = None,
    setup: bool = True,
    timestamp_ms: int | None = None,
) -> StageRun:
    """Run the stage named `stage` in topology `config` over `records`, in-process and without Kafka.

    Each dict is encoded with the Avro codec of the stage's input topic (bytes are passed as they are, to test
    undecodable input; a Tombstone is a null value under its key); batches of at most batch.max_records go through the runtime's own batch handler
    (decode, process with bisection of failing batches, Reject -> dead letter, encode with the output topic's
    codec). `options` override the stage's options from the file, validated as topics.yaml's are. The stage's
    setup() runs first and close() last (`setup=False` skips both). A Stage instance may be given instead of
    a name: it is used as it is, neither set up nor closed, so several runs can share it. A TransientError
    from the stage is raised (the runtime would retry it)."""
    if isinstance(stage, Stage):
        if options:
            raise ValueError("options apply to a stage loaded by name, not to a Stage instance")
        instance, owned = stage, False
    else:
        topology = config if isinstance(config, Topology) else load_topology(config)
        topology = topology.model_copy(deep=True)  # options are overridden on the copy only
        spec = topology.stage(stage)
        spec.options = {**spec.options, **(options or {})}
        instance, owned = load_stage(topology, stage), setup
    topology = _single_object(instance.topology)
    spec = instance.spec
    in_codec = codec_for(topology, spec.input)
    key_field = topology.topic(spec.input).key_field
    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    raws = []
    for offset, record in enumerate(records):
        if isinstance(record, bytes):
            value, key = record, None
        elif isinstance(record, Tombstone):
            value, key = None, record.key.encode() if isinstance(record.key, str) else record.key
        else:
            try:
                value = in_codec.encode(record)
            except AvroError as exc:
                raise ValueError(f"input {offset} does not fit {spec.input}'s schema: {exc}") from None
            key = record_key(record, key_field)
        raws.append(Raw(key, value, spec.input, 0, offset, now))

    sender = _MemorySender()
    handler = BatchHandler(instance, topology, sender=sender)
    handler.stopping.set()  # a TransientError stops the run (raised below) instead of being retried forever
    if owned:
        instance.setup()
    try:
        size = spec.batch.max_records
        for start in range(0, len(raws), size):
            try:
                handler.run_batch(raws[start:start + size])
            except Stopping as exc:
                raise exc.__cause__ from None
    finally:
        if owned:
            instance.close()
    return _collect(sender, topology, spec.output, spec.dead_letter, in_codec)


def _collect(sender: _MemorySender, topology: Topology, output: str | None, dead_letter: str,
             in_codec: Any) -> StageRun:
    run = StageRun()
    out_codec = codec_for(topology, output) if output else None
    for topic, value, key, headers in sender.records:
        if topic == output and out_codec is not None:
            run.outputs.append(out_codec.decode(value))
            run.output_keys.append(key)
        elif topic == dead_letter:
            error = read_headers(headers)
            try:
                decoded = in_codec.decode(value)
            except AvroError:
                decoded = None
            run.dead_letters.append(TestDeadLetter(error.get("reason", "unknown"), error.get("message", ""),
                                                   decoded, value, error))
        else:
            raise AssertionError(f"the batch handler produced to an unexpected topic {topic}")
    run.dead_letters.sort(key=lambda d: int(d.headers.get("offset", 0)))  # input order
    return run


# --- on a real broker (pytest) ----------------------------------------------------------------------------

@dataclass
class StageProcess:
    """A `pipeline run STAGE` worker process started for a test."""

    name: str
    proc: subprocess.Popen
    log: Path
    topology: Topology

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the worker finishes its batch and commits), then wait; killed if it does not exit."""
        terminate([self.proc], timeout)
        return self.proc.returncode


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def start_stage_process(config: str | Path, stage: str, bootstrap: str | None, log_dir: Path, *args: str,
                        apply_topics: bool = True, ready_timeout: float = 180) -> StageProcess:
    """Start `python -m pipeline -c CONFIG run STAGE ARGS` and return once its /ready page says it has its
    model loaded and partitions assigned; the topology's topics are created first unless apply_topics=False."""
    topology = load_topology(config, bootstrap)
    topology.stage(stage)
    if apply_topics:
        from pipeline.kafka import admin

        admin.create_missing(topology)
    log = log_dir / f"{stage}.log"
    proc = spawn(worker_command(stage, 0, config, bootstrap, "--loglevel", "warn", *args), log, new_session=False)
    started = StageProcess(stage, proc, log, topology)
    port = _web_port(topology, stage, args)
    deadline = time.monotonic() + ready_timeout
    while not _ready(port):
        if proc.poll() is not None:
            raise PipelineError(f"stage {stage} exited with {proc.returncode}:\n{started.log_tail()}")
        if time.monotonic() > deadline:
            started.stop()
            raise PipelineError(f"stage {stage} not ready after {ready_timeout:.0f}s:\n{started.log_tail()}")
        time.sleep(0.5)
    return started


def _web_port(topology: Topology, stage: str, args: tuple[str, ...]) -> int:
    for i, arg in enumerate(args):
        if arg == "--web-port" and i + 1 < len(args):
            return int(args[i + 1])
        if arg.startswith("--web-port="):
            return int(arg.split("=", 1)[1])
    return topology.stage(stage).web_port


try:
    import pytest
except ImportError:  # the in-process kit works without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def pipeline_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
        """A real broker's bootstrap address: KAFKA_BOOTSTRAP if set, else a local broker that `pipeline dev up`
        starts on PIPELINE_TEST_PORT (default 19092) for the session. A project may override this fixture."""
        if os.environ.get("KAFKA_BOOTSTRAP"):
            yield os.environ["KAFKA_BOOTSTRAP"]
            return
        port = os.environ.get("PIPELINE_TEST_PORT", "19092")
        env = {**os.environ, "PIPELINE_DEV_HOME": str(tmp_path_factory.mktemp("dev-broker"))}
        cli = [sys.executable, "-m", "pipeline", "dev"]
        started = subprocess.run([*cli, "up", "--port", port], capture_output=True, text=True, env=env)
        if started.returncode != 0:
            raise PipelineError(f"could not start a local Kafka broker: {started.stderr[-2000:]}")
        try:
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([*cli, "down", "--port", port], capture_output=True, env=env)

    @pytest.fixture
    def stage_on_broker(pipeline_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., StageProcess]]:
        """A factory: `stage_on_broker(stage, config="topics.yaml", *run_args)` starts the stage as a worker on
        the session's broker (topics created, waits until ready) and stops it when the test ends."""
        started: list[StageProcess] = []

        def start(stage: str, config: str | Path = DEFAULT_CONFIG, *args: str, apply_topics: bool = True,
                  ready_timeout: float = 180) -> StageProcess:
            process = start_stage_process(config, stage, pipeline_bootstrap, tmp_path, *args,
                                          apply_topics=apply_topics, ready_timeout=ready_timeout)
            started.append(process)
            return process

        yield start
        for process in started:
            process.stop()
