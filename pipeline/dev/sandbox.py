"""A private copy of a topology: prefixed topics and groups and shifted ports, for tests and benchmarks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Topology, load_topology


def isolated(raw: dict[str, Any], prefix: str, bootstrap: str, port_shift: int = 10000,
             partitions: int | None = None) -> dict[str, Any]:
    """`raw` (a parsed topics.yaml) with every topic and group renamed PREFIX+name and web ports moved by
    `port_shift`, so the copy never touches the topics, groups or stages of a running pipeline."""
    raw = copy.deepcopy(raw)
    rename = {name: prefix + name for name in raw["topics"]}
    raw["topics"] = {rename[n]: spec for n, spec in raw["topics"].items()}
    if partitions is not None:  # dead-letter topics keep their single partition
        for spec in raw["topics"].values():
            if spec.get("partitions", 0) > 1 or "partitions" not in spec:
                spec["partitions"] = partitions
    for stage in raw["stages"].values():
        for role in ("input", "output", "dead_letter"):
            if stage.get(role):
                stage[role] = rename[stage[role]]
        stage["group"] = prefix + stage["group"]
        stage["web_port"] += port_shift
    gateway = raw.get("gateway")
    if gateway:  # the online gateway records to one of the renamed topics and serves its own port
        if gateway.get("record_to"):
            gateway["record_to"] = rename[gateway["record_to"]]
        gateway["web_port"] = gateway.get("web_port", 6110) + port_shift
    raw["kafka"]["bootstrap"] = bootstrap
    return raw


def write(raw: dict[str, Any], folder: Path, schemas_dir: Path) -> tuple[Path, Topology]:
    """Save `raw` as FOLDER/topics.yaml (schemas read from `schemas_dir`) and load it back, validated."""
    raw = {**raw, "schemas_dir": str(schemas_dir)}
    path = folder / "topics.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, load_topology(path)
