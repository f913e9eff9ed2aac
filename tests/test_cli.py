"""The command line: --help everywhere, and bad input gives a message and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
import typer.main

from pipeline.cli import app
from tests.conftest import run_cli


def _command_paths(command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(command, "commands"):  # a group (typer may bring its own click)
        for name, sub in command.commands.items():
            paths += _command_paths(sub, (*prefix, name))
    return paths


PATHS = _command_paths(typer.main.get_command(app))


def test_every_command_is_listed() -> None:
    names = {" ".join(p) for p in PATHS}
    assert {"dev up", "dev down", "dev status", "dev logs", "topics apply", "topics list", "topics describe",
            "schemas check", "produce", "consume"} <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "root")
def test_help(path: tuple[str, ...]) -> None:
    done = run_cli(*path, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["-c", "missing.yaml", "topics", "list"], "missing.yaml: topology file not found"),
        (["produce", "--topic", "docs.nope", "stages/data/sample.jsonl"], "topic 'docs.nope' is not declared"),
        (["produce", "--topic", "docs.raw", "no-such-file.jsonl"], "no-such-file.jsonl: no such file"),
        (["--bootstrap", "127.0.0.1:1", "topics", "list"], "cannot reach Kafka"),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(args: list[str], message: str) -> None:
    done = run_cli(*args, timeout=60)
    assert done.returncode != 0
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def test_unknown_option_exits_non_zero() -> None:
    done = run_cli("produce", "--nope")
    assert done.returncode == 2
    assert "No such option" in done.stderr
