"""`pipeline stage new`: the files it writes, the topics.yaml it edits (comments kept), and what it refuses."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_topology

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder like a new user's: the repo's topics.yaml and schemas, and an empty stages package."""
    shutil.copy(ROOT / "topics.yaml", tmp_path / "topics.yaml")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text("")
    return tmp_path


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """A command run in `folder`, which comes first on the import path (its `stages` package, then ours)."""
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def _new(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(folder, "-m", "pipeline", "stage", "new", *args)


def _changes(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in diff if d.startswith("+ ")], [d[2:] for d in diff if d.startswith("- ")]


def test_new_stage_after_classify(project: Path) -> None:
    before = (project / "topics.yaml").read_text()
    made = _new(project, "keywords", "--after", "classify")
    assert made.returncode == 0, made.stderr

    after = (project / "topics.yaml").read_text()
    added, removed = _changes(before, after)
    assert added == [
        "  docs.keywords:",
        "    value_schema: pipeline.docs.KeywordsPassage",
        "    key_field: doc_id",
        "  docs.dlq.keywords: {partitions: 1, config: {retention.ms: 2592000000}}",
        "  keywords:",
        "    impl: stages.keywords:KeywordsStage",
        "    web_port: 6105",  # the lowest port above the existing stages' (6101-6104)
        "    input: docs.classified",
        "    output: docs.keywords",
        "    dead_letter: docs.dlq.keywords",
        "    group: pipeline-keywords",
        "    batch: {max_records: 500, max_wait_ms: 50}",  # like classify's
        "    options: {}",
        "    input: docs.keywords",  # the store now reads the new stage's output
    ]
    assert removed == ["    input: docs.classified"]
    lines = after.splitlines()
    # The comment that introduced the dead-letter topics still sits right above them.
    comment = lines.index("  # Dead letters keep the original key/value bytes untouched; the reason travels in headers.")
    assert lines[comment - 1] == "    key_field: doc_id" and lines[comment + 1].startswith("  docs.dlq.preprocess:")
    assert lines.index("  keywords:") > lines.index("  classify:") and lines.index("  keywords:") < lines.index("  store:")

    topology = load_topology(project / "topics.yaml")
    assert topology.stages["store"].input == "docs.keywords"
    assert topology.topics["docs.keywords"].value_schema == "pipeline.docs.KeywordsPassage"

    schema = json.loads((project / "schemas" / "keywords_passage.v1.avsc").read_text())
    newest = max((project / "schemas").glob("classified_passage.v*.avsc"), key=lambda f: int(f.stem.split(".v")[1]))
    classified = json.loads(newest.read_text())  # the current version of the input record
    assert schema["name"] == "KeywordsPassage" and schema["namespace"] == "pipeline.docs"
    assert schema["fields"][:-1] == classified["fields"]  # everything the store needs, vector included
    assert {k: schema["fields"][-1][k] for k in ("name", "type", "default")} == {
        "name": "keywords", "type": ["null", "string"], "default": None}

    source = (project / "stages" / "keywords.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["from __future__ import annotations", "from pipeline import Incoming, Options, Result, Stage"]
    test_source = (project / "tests" / "test_stage_keywords.py").read_text()
    assert "from pipeline.testing import run_stage" in test_source and "kafka" not in test_source

    # Right after the scaffold: the schemas check and the generated test pass.
    checked = _run(project, "-m", "pipeline", "schemas", "check")
    assert checked.returncode == 0, checked.stderr
    tested = _run(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_stage_keywords.py")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout

    # A second stage gets the next free port and goes after the first.
    again = _new(project, "lang", "--after", "keywords", "--same-type", "--module", "stages.lang")
    assert again.returncode == 0, again.stderr
    topology = load_topology(project / "topics.yaml")
    assert topology.stages["lang"].web_port == 6106
    assert topology.topics["docs.lang"].value_schema == "pipeline.docs.KeywordsPassage"
    assert (topology.stages["lang"].input, topology.stages["store"].input) == ("docs.keywords", "docs.lang")
    assert not (project / "schemas" / "lang_passage.v1.avsc").exists()
    tested = _run(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_stage_lang.py")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_field_type_and_module_and_test_folder(project: Path) -> None:
    (project / "mine").mkdir()
    (project / "mine" / "__init__.py").write_text("")
    made = _new(project, "tags", "--after", "embed", "--field", "tags", "--field-type", "strings",
                "--module", "mine.tags", "--tests", "mine", "--output-schema", "TaggedPassage")
    assert made.returncode == 0, made.stderr
    schema = json.loads((project / "schemas" / "tagged_passage.v1.avsc").read_text())
    assert schema["fields"][-1]["type"] == {"type": "array", "items": "string"}
    assert schema["fields"][-1]["default"] == []
    topology = load_topology(project / "topics.yaml")
    assert topology.stages["tags"].impl == "mine.tags:TagsStage"
    assert topology.stages["tags"].batch.max_records == 64  # like embed's
    assert topology.stages["classify"].input == "docs.tags"
    tested = _run(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", "mine/test_stage_tags.py")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["classify", "--after", "embed"], "there is already a stage 'classify'"),
    (["Key-words", "--after", "classify"], "'Key-words' is not a valid stage name"),
    (["import", "--after", "classify"], "'import' is not a valid stage name"),
    (["keywords", "--after", "nope"], "no stage 'nope' to put 'keywords' after"),
    (["keywords", "--after", "store"], "stage 'store' writes no output topic"),
    (["keywords", "--after", "classify", "--topic", "docs.embedded"], "topic 'docs.embedded' is already declared"),
    (["keywords", "--after", "classify", "--field", "label"], "already has a field 'label'"),
    (["keywords", "--after", "classify", "--same-type", "--output-schema", "X"], "either --same-type or"),
    (["keywords", "--after", "classify", "--output-schema", "ClassifiedPassage"], None),  # reuse: allowed
    (["keywords", "--after", "classify", "--module", "nowhere.keywords"], "nowhere/ does not exist"),
    (["embed", "--after", "classify"], "there is already a stage 'embed'"),
])
def test_refusals_leave_everything_untouched(project: Path, args: list[str], message: str | None) -> None:
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    made = _new(project, *args)
    if message is None:
        assert made.returncode == 0, made.stderr
        return
    assert made.returncode == 2, made.stderr
    assert message in " ".join(made.stderr.split()) and "Traceback" not in made.stderr
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


def test_never_overwrites_a_file(project: Path) -> None:
    (project / "stages" / "keywords.py").write_text("# mine\n")
    (project / "tests").mkdir()
    before = (project / "topics.yaml").read_text()
    made = _new(project, "keywords", "--after", "classify")
    assert made.returncode == 2 and "stages/keywords.py already exists" in " ".join(made.stderr.split())
    assert (project / "stages" / "keywords.py").read_text() == "# mine\n"
    assert (project / "topics.yaml").read_text() == before
    (project / "stages" / "keywords.py").unlink()
    (project / "tests" / "test_stage_keywords.py").write_text("# mine\n")
    made = _new(project, "keywords", "--after", "classify")
    assert made.returncode == 2 and "tests/test_stage_keywords.py already exists" in " ".join(made.stderr.split())
    (project / "tests" / "test_stage_keywords.py").unlink()
    other = json.loads((project / "schemas" / "passage.v1.avsc").read_text())
    (project / "schemas" / "keywords_passage.v1.avsc").write_text(json.dumps({**other, "name": "Other"}))
    made = _new(project, "keywords", "--after", "classify")
    assert made.returncode == 2 and "keywords_passage.v1.avsc already exists" in " ".join(made.stderr.split())
    assert not (project / "stages" / "keywords.py").exists()
