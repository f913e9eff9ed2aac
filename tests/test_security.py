"""SASL on the real broker (its SASL_PLAINTEXT listener): every client and the Faust stage authenticate, and the
password never shows up in output, errors or logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_topology
from pipeline.errors import ConfigError
from pipeline.kafka.offsets import stage_lag
from tests.conftest import PIPELINE, ROOT, SASL_USER, TEST_PORT, lag, run_cli, wait_for


def _sasl_topology(path: Path) -> Path:
    raw = yaml.safe_load(path.read_text())
    raw["kafka"]["bootstrap"] = f"127.0.0.1:{TEST_PORT + 2}"
    raw["kafka"]["security"] = {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_sasl_clients_and_faust_stage(topology, tmp_path: Path, monkeypatch) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP"):  # an external cluster has no SASL listener of ours
        monkeypatch.delenv("KAFKA_BOOTSTRAP")
    path = _sasl_topology(topology[0])
    password = SASL_USER["KAFKA_PASSWORD"]
    env = {**SASL_USER, "KAFKA_BOOTSTRAP": ""}
    applied = run_cli("-c", str(path), "topics", "apply", env=env)
    assert applied.returncode == 0, applied.stderr
    topo = load_topology(path)
    source = tmp_path / "docs.jsonl"
    docs = [{"doc_id": f"s{i}", "text": f"Authenticated document {i}."} for i in range(20)]
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    raw_topic = topo.stages["preprocess"].input
    assert run_cli("-c", str(path), "produce", "-t", raw_topic, str(source), env=env).returncode == 0
    read = run_cli("-c", str(path), "consume", raw_topic, "--from-beginning", "-e", env=env)
    assert sorted(json.loads(line)["doc_id"] for line in read.stdout.splitlines()) == sorted(d["doc_id"] for d in docs)

    log = tmp_path / "preprocess.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([*PIPELINE, "-c", str(path), "run", "preprocess", "--loglevel", "info"],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        monkeypatch.setenv("KAFKA_USERNAME", SASL_USER["KAFKA_USERNAME"])
        monkeypatch.setenv("KAFKA_PASSWORD", password)
        wait_for(lambda: lag(topo, ["preprocess"]) == 0
                 and sum(r.committed or 0 for r in stage_lag(topo, "preprocess")) == 20,
                 120, "the Faust stage over SASL", {"preprocess": worker}, tmp_path)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    assert password not in log.read_text()


def test_wrong_or_missing_credentials_are_clear_and_secret(topology) -> None:
    path = _sasl_topology(topology[0])
    wrong = {"KAFKA_USERNAME": SASL_USER["KAFKA_USERNAME"], "KAFKA_PASSWORD": "not-the-password-42",
             "KAFKA_BOOTSTRAP": ""}
    done = run_cli("-c", str(path), "topics", "list", env=wrong, timeout=120)
    assert done.returncode == 2
    assert "not-the-password-42" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert "cannot reach Kafka" in done.stderr or "Authentication" in done.stderr
    missing = run_cli("-c", str(path), "topics", "list", env={"KAFKA_USERNAME": "", "KAFKA_PASSWORD": "",
                                                               "KAFKA_BOOTSTRAP": ""})
    assert missing.returncode == 2
    assert "set the environment variables KAFKA_USERNAME and KAFKA_PASSWORD" in " ".join(missing.stderr.split())


def test_secrets_are_refused_in_the_file(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "topics.yaml").read_text())
    raw["schemas_dir"] = str(ROOT / "schemas")
    raw["kafka"]["client"] = {"sasl.password": "hunter2"}
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="must not hold secrets") as err:
        load_topology(path)
    assert "hunter2" not in str(err.value)
