"""`pipeline stage new`: scaffold a stage after another one: its code, schema, topics.yaml entries and test."""

from __future__ import annotations

import copy
import io
import json
import keyword
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from rich.markup import escape
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.tokens import CommentToken

from pipeline.avro.schemas import SchemaStore
from pipeline.commands.context import console, settings
from pipeline.config import DEFAULT_CONFIG, load_topology, validate_topology
from pipeline.errors import ConfigError

app = typer.Typer(help="Write new stages: code, schema, topics.yaml entries and a test.", no_args_is_help=True)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# --field-type: the Avro type of the new field and its default (a default keeps readers of older data working).
FIELD_TYPES: dict[str, tuple[Any, Any]] = {
    "string": (["null", "string"], None),
    "strings": ({"type": "array", "items": "string"}, []),
    "int": (["null", "int"], None),
    "float": (["null", "float"], None),
    "boolean": (["null", "boolean"], None),
}


@dataclass
class Plan:
    """Everything `stage new` will write, worked out (and checked) before anything is written."""

    name: str
    after: str
    class_name: str
    module: str
    stage_file: Path
    test_file: Path
    config: Path
    input_topic: str
    output_topic: str
    dead_letter: str
    in_record: str
    out_record: str
    new_schema: dict[str, Any] | None  # None: the output reuses an existing record
    schema_file: Path | None
    field: str | None  # the field the new record adds
    field_default: Any
    web_port: int
    rewired: list[str]
    topics_yaml: str
    example: dict[str, Any]  # a valid input record, for the test


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_") if part)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _short(full: str) -> tuple[str, str]:
    """(namespace, name) of a full Avro name."""
    namespace, _, short = full.rpartition(".")
    return namespace, short


def _example(schema: Any, named: dict[str, Any], field: str = "value") -> Any:
    """A small valid value of an Avro type, for the generated test."""
    if isinstance(schema, list):  # a union: null where allowed, else its first branch
        return None if "null" in schema else _example(schema[0], named, field)
    if isinstance(schema, str):
        if schema in named:
            return _example(named[schema], named, field)
        return {"string": f"example {field}", "int": 0, "long": 0, "float": 0.0, "double": 0.0, "boolean": False,
                "bytes": b"", "null": None}.get(schema)
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        if schema.get("namespace"):
            named[f"{schema['namespace']}.{schema['name']}"] = schema
        return {f["name"]: _example(f["type"], named, f["name"]) for f in schema["fields"]}
    if kind == "enum":
        named[schema["name"]] = schema
        return schema["symbols"][0]
    if kind == "fixed":
        named[schema["name"]] = schema
        return b"\0" * schema["size"]
    if kind in ("array", "map"):
        return [] if kind == "array" else {}
    return _example(kind, named, field)


def _literal(value: Any) -> str:
    """Python source for a plain value, strings in double quotes."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bytes):  # only b"" and zero bytes come from _example
        return 'b"' + repr(value)[2:-1] + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _refuse(message: str) -> NoReturn:
    raise ConfigError(message)


def _block_end(parent: CommentedMap, key: Any) -> tuple[Any, Any]:
    """Where ruamel keeps the comments that follow the entry `key`: (the map holding them, its key)."""
    value = parent[key]
    while isinstance(value, CommentedMap) and value and not value.fa.flow_style():
        parent, key = value, list(value)[-1]
        value = parent[key]
    return parent, key


def _insert_after(parent: CommentedMap, after: str, key: str, value: Any) -> None:
    """Insert key: value right after `after`, moving the full-line comments that followed `after` (they
    introduce what comes next) below the new entry."""
    parent.insert(list(parent).index(after) + 1, key, value)
    holder, last = _block_end(parent, after)
    slot = holder.ca.items.get(last)
    token = slot[2] if slot and len(slot) > 2 else None
    if not isinstance(token, CommentToken) or "\n" not in token.value:
        return
    head, _, tail = token.value.partition("\n")
    if not tail:
        return
    token.value = head + "\n"
    # A comment token's text starts with the end of the line it follows, hence the leading line break.
    new_holder, new_last = _block_end(parent, key)
    new_holder.ca.items[new_last] = [None, None, CommentToken("\n" + tail, token.start_mark, None), None]


def _fresh(node: Any) -> Any:
    """A copy of a ruamel mapping without its comments, in the same style (block or flow)."""
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    out = CommentedMap()
    for k, v in node.items():
        out[k] = _fresh(v)
    if isinstance(node, CommentedMap) and node.fa.flow_style():
        out.fa.set_flow_style()
    return out


def plan_stage(config: Path, name: str, after: str, output_schema: str | None = None, same_type: bool = False,
               field: str | None = None, field_type: str = "string", module: str | None = None,
               tests: Path = Path("tests"), topic: str | None = None) -> Plan:
    """Work out and check every file `stage new` writes; ConfigError says what stands in the way."""
    topology = load_topology(config)
    if not _NAME.match(name) or keyword.iskeyword(name):
        _refuse(f"'{name}' is not a valid stage name: use a lowercase Python identifier (a-z, 0-9, _), "
                "e.g. keywords")
    if name in topology.stages:
        _refuse(f"{config}: there is already a stage '{name}'; pick another name")
    if after not in topology.stages:
        _refuse(f"{config}: no stage '{after}' to put '{name}' after (stages: {', '.join(topology.stages)})")
    upstream = topology.stages[after]
    if upstream.output is None:
        _refuse(f"stage '{after}' writes no output topic (it is a sink), so no stage can come after it")
    if same_type and output_schema:
        _refuse("give either --same-type or --output-schema, not both")
    if field_type not in FIELD_TYPES:
        _refuse(f"--field-type must be one of {', '.join(FIELD_TYPES)}, not '{field_type}'")
    input_topic = upstream.output
    in_record = topology.topics[input_topic].value_schema
    if in_record is None:
        _refuse(f"topic '{input_topic}' carries raw bytes (no value_schema), so the scaffold cannot type its records")
    store = SchemaStore.load(topology.schemas_dir)
    in_schema = store.current(in_record).raw
    namespace, in_short = _short(in_record)

    new_schema = schema_file = None
    field_name: str | None = None
    if same_type:
        out_record = in_record
    else:
        suffix = re.findall(r"[A-Z][a-z0-9]*", in_short)
        wanted = output_schema or _camel(name) + (suffix[-1] if suffix else "Record")
        out_record = wanted if "." in wanted else f"{namespace}.{wanted}" if namespace else wanted
        if not all(_AVRO_NAME.match(part) for part in out_record.split(".")):
            _refuse(f"'{wanted}' is not a valid Avro record name")
        if out_record in store.names() and not output_schema:
            _refuse(f"a record {out_record} is already in {store.folder}: pass --output-schema {out_record} to "
                    "use it, or --output-schema NEW_NAME for a new one")
        if out_record not in store.names():
            field_name = field or name
            if not _AVRO_NAME.match(field_name):
                _refuse(f"'{field_name}' is not a valid Avro field name")
            if field_name in {f["name"] for f in in_schema["fields"]}:
                _refuse(f"{in_record} already has a field '{field_name}': name the new one with --field")
            avro_type, default = FIELD_TYPES[field_type]
            new_schema = copy.deepcopy(in_schema)
            new_schema["name"] = _short(out_record)[1]
            new_schema["namespace"] = _short(out_record)[0] or None
            if new_schema["namespace"] is None:
                del new_schema["namespace"]
            doc = in_schema.get("doc", f"A {in_short}.").rstrip(".")
            new_schema["doc"] = f"{doc}, with {field_name} (added by the {name} stage)."
            new_schema["fields"].append({"name": field_name, "type": avro_type, "default": default,
                                         "doc": f"TODO: what the {name} stage adds."})
            schema_file = topology.schemas_dir / f"{_snake(_short(out_record)[1])}.v1.avsc"

    module = module or f"stages.{name}"
    if not all(part.isidentifier() and not keyword.iskeyword(part) for part in module.split(".")):
        _refuse(f"--module '{module}' is not a dotted Python module name")
    stage_file = Path(*module.split(".")).with_suffix(".py")
    if not stage_file.parent.is_dir():
        _refuse(f"{stage_file.parent}/ does not exist: run from the project root, or create the package for "
                f"--module {module} first")
    test_file = tests / f"test_stage_{name}.py"

    prefix = input_topic.rpartition(".")[0]
    output_topic = topic or (f"{prefix}.{name}" if prefix else name)
    dead_letter = (upstream.dead_letter[: -len(after)] + name if upstream.dead_letter.endswith(after)
                   else f"{output_topic}.dlq")
    for taken in (output_topic, dead_letter):
        if taken in topology.topics:
            _refuse(f"{config}: topic '{taken}' is already declared" +
                    ("; name the output topic with --topic" if taken == output_topic else ""))
    for path in (stage_file, test_file, schema_file):
        if path is not None and path.exists():
            _refuse(f"{path} already exists; the scaffold never overwrites a file (move it away, or pick "
                    "another name)")

    web_port = max(spec.web_port for spec in topology.stages.values()) + 1
    group = upstream.group[: -len(after)] + name if upstream.group.endswith(after) else f"pipeline-{name}"
    rewired = [n for n, spec in topology.stages.items() if spec.input == input_topic]
    text = _edit_topics(config, name, after, module, _camel(name) + "Stage", input_topic, output_topic,
                        dead_letter, out_record, web_port, group, rewired)
    example = _example(copy.deepcopy(in_schema), {})
    return Plan(name, after, _camel(name) + "Stage", module, stage_file, test_file, config, input_topic,
                output_topic, dead_letter, in_record, out_record, new_schema, schema_file, field_name,
                FIELD_TYPES[field_type][1], web_port, rewired, text, example)


def _edit_topics(config: Path, name: str, after: str, module: str, class_name: str, input_topic: str,
                 output_topic: str, dead_letter: str, out_record: str, web_port: int, group: str,
                 rewired: list[str]) -> str:
    """topics.yaml with the new topics and stage, and the downstream stages reading the new output; the
    file's comments, quoting and order are kept."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    # ruamel writes a null as an empty value; keep the file's explicit `null`s as they were.
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(config.read_text(encoding="utf-8"))
    topics, stages = doc["topics"], doc["stages"]
    out_spec = _fresh(topics[input_topic])
    out_spec["value_schema"] = out_record
    _insert_after(topics, input_topic, output_topic, out_spec)
    upstream = stages[after]
    _insert_after(topics, upstream["dead_letter"], dead_letter, _fresh(topics[upstream["dead_letter"]]))
    spec = CommentedMap()
    spec["impl"] = f"{module}:{class_name}"
    spec["web_port"] = web_port
    spec["input"] = input_topic
    spec["output"] = output_topic
    spec["dead_letter"] = dead_letter
    spec["group"] = group
    if "batch" in upstream:
        spec["batch"] = _fresh(upstream["batch"])
    spec["options"] = CommentedMap()
    spec["options"].fa.set_flow_style()
    _insert_after(stages, after, name, spec)
    for consumer in rewired:
        stages[consumer]["input"] = output_topic
    out = io.StringIO()
    rt.dump(doc, out)
    text = out.getvalue()
    validate_topology(yaml.safe_load(text), config)  # the pydantic checks, before anything is written
    return text


def _stage_source(plan: Plan) -> str:
    in_short, out_short = _short(plan.in_record)[1], _short(plan.out_record)[1]
    if plan.field:
        placeholder = repr(plan.field_default)
        work = (f"            # TODO: compute `{plan.field}` from the record (e.g. record[\"text\"]) and set it.\n"
                f"            results.append([{{**record, \"{plan.field}\": {placeholder}}}])\n")
    elif plan.out_record == plan.in_record:
        work = ("            # TODO: change the record (same type in and out).\n"
                "            results.append([record])\n")
    else:
        work = (f"            # TODO: build a {out_short} from the record.\n"
                "            results.append([dict(record)])\n")
    return f'''"""{_camel(plan.name)}: reads {in_short} from {plan.input_topic}, writes {out_short} to {plan.output_topic}."""

from __future__ import annotations

from pipeline import Incoming, Options, Result, Stage


class {plan.class_name}(Stage):
    """TODO: one line on what this stage adds to each record."""

    class Options(Options):
        """stages.{plan.name}.options in topics.yaml, validated when the stage loads (unknown keys are refused).
        Declare fields here, e.g. `top_k: int = 5`, and read them as self.options.top_k."""

    def setup(self) -> None:
        """Runs once in the worker before the first batch: load models and open connections here."""

    def process(self, batch: list[Incoming]) -> list[Result]:
        """One result per input, in order: the output records it makes (a list, maybe empty), or
        Reject(reason, message) from `pipeline` to send the input to the dead-letter topic."""
        results: list[Result] = []
        for item in batch:
            record = item.value
{work}        return results
'''


def _test_source(plan: Plan) -> str:
    rel = Path(os.path.relpath(plan.config.resolve(), plan.test_file.parent.resolve()))
    ups = len([p for p in rel.parts if p == ".."])
    rest = "/".join(f'"{p}"' for p in rel.parts[ups:])
    base = "Path(__file__).resolve().parent" if ups == 0 else f"Path(__file__).resolve().parents[{ups}]"
    record = "{\n" + "".join(f"    {_literal(k)}: {_literal(v)},\n" for k, v in plan.example.items()) + "}"
    if plan.out_record != plan.in_record and plan.new_schema is None:  # an existing record: fields unknown
        check = ""
    else:
        check = "    assert {k: out[k] for k in RECORD} == RECORD  # the input's fields pass through\n"
    check += f'    assert "{plan.field}" in out\n' if plan.field else ""
    return f'''"""The {plan.name} stage on plain records, through the real Avro codecs of its topics."""

from __future__ import annotations

from pathlib import Path

from pipeline.testing import run_stage

CONFIG = {base} / {rest}
# A valid {_short(plan.in_record)[1]} (the stage's input); edit it into a realistic one.
RECORD = {record}


def test_{plan.name}_keeps_the_input_fields() -> None:
    run = run_stage("{plan.name}", [RECORD], config=CONFIG)
    assert not run.dead_letters
    assert len(run.outputs) == 1
    out = run.outputs[0]
{check}'''


def write_plan(plan: Plan) -> None:
    """Write the files of a checked plan (schema first: topics.yaml names it)."""
    if plan.new_schema is not None and plan.schema_file is not None:
        plan.schema_file.write_text(json.dumps(plan.new_schema, indent=2) + "\n", encoding="utf-8")
    plan.stage_file.write_text(_stage_source(plan), encoding="utf-8")
    plan.test_file.parent.mkdir(parents=True, exist_ok=True)
    plan.test_file.write_text(_test_source(plan), encoding="utf-8")
    plan.config.write_text(plan.topics_yaml, encoding="utf-8")
    load_topology(plan.config)  # the whole file again, schema names included


@app.command()
def new(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The new stage's name (a lowercase identifier), e.g. keywords."),
    after: str = typer.Option(..., "--after", metavar="STAGE", help="The stage whose output the new stage reads."),
    output_schema: str = typer.Option(None, "--output-schema",
                                      help="Record the stage writes: an existing one, or the name of a new one "
                                           "(default: <Name><InputKind>, e.g. KeywordsPassage)."),
    same_type: bool = typer.Option(False, "--same-type", help="Write the input's record type unchanged."),
    field: str = typer.Option(None, help="The field the new record adds (default: the stage's name)."),
    field_type: str = typer.Option("string", help=f"Its type: {', '.join(FIELD_TYPES)}."),
    module: str = typer.Option(None, help="Python module of the stage (default: stages.NAME)."),
    tests: Path = typer.Option(Path("tests"), help="Folder of the generated test."),
    topic: str = typer.Option(None, help="Output topic (default: the input topic's prefix + NAME)."),
    config: Path = typer.Option(None, "--config", "-c", help="Topology file to edit (default: the global one)."),
) -> None:
    """Add a stage after STAGE: its code, its output schema, its topics (output and dead letters), its
    entry in topics.yaml (the stages that read STAGE's output read the new stage's instead), and a test."""
    path = Path(config or settings(ctx).config or os.environ.get("PIPELINE_CONFIG") or DEFAULT_CONFIG)
    plan = plan_stage(path, name, after, output_schema, same_type, field, field_type, module, tests, topic)
    write_plan(plan)
    written = [plan.stage_file, plan.test_file] + ([plan.schema_file] if plan.new_schema else [])
    for item in written:
        shown = os.path.relpath(item) if item.resolve().is_relative_to(Path.cwd()) else str(item)
        console.print(f"wrote {escape(shown)}")
    console.print(f"{escape(str(plan.config))}: stage {plan.name} ({plan.input_topic} -> {plan.output_topic}, "
                  f"{plan.out_record}, web port {plan.web_port}); topics {plan.output_topic}, {plan.dead_letter}"
                  + (f"; {', '.join(plan.rewired)} now read{'s' if len(plan.rewired) == 1 else ''} {plan.output_topic}" if plan.rewired else ""))
    console.print(f"next: fill in process() in {escape(str(plan.stage_file))}, then "
                  f"`python -m pytest {escape(str(plan.test_file))}` and `pipeline topics apply`")
