"""Backward compatibility of Avro schemas: can the current reader read what every older writer wrote."""

from __future__ import annotations

from typing import Any

from pipeline.avro.schemas import SchemaStore

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
# Avro's schema resolution: writer type -> reader types it may be promoted to.
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def _named_types(schema: Any, found: dict[str, dict]) -> dict[str, dict]:
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, found)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in ("record", "error", "enum", "fixed"):
            found[schema["name"]] = schema
        if kind in ("record", "error"):
            for f in schema["fields"]:
                _named_types(f["type"], found)
        elif kind == "array":
            _named_types(schema["items"], found)
        elif kind == "map":
            _named_types(schema["values"], found)
        elif isinstance(kind, (dict, list)):
            _named_types(kind, found)
    return found


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader_names = _named_types(reader, {})
        self.writer_names = _named_types(writer, {})
        self.seen: set[tuple[str, str]] = set()

    def _deref(self, schema: Any, names: dict[str, dict]) -> Any:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return names[schema]
        if isinstance(schema, dict) and isinstance(schema["type"], (str, list, dict)):
            inner = schema["type"]
            if isinstance(inner, str) and inner in PRIMITIVES:
                return inner  # {"type": "string", "logicalType": ...} reads as its base type
            if not isinstance(inner, str):
                return self._deref(inner, names)
        return schema

    @staticmethod
    def _kind(schema: Any) -> str:
        if isinstance(schema, list):
            return "union"
        return schema if isinstance(schema, str) else schema["type"]

    def check(self, reader: Any, writer: Any, path: str) -> list[str]:
        reader = self._deref(reader, self.reader_names)
        writer = self._deref(writer, self.writer_names)
        rk, wk = self._kind(reader), self._kind(writer)
        if wk == "union":
            problems = []
            for branch in writer:
                problems += self.check(reader, branch, path)
            return problems
        if rk == "union":
            for branch in reader:
                if not self.check(branch, writer, path):
                    return []
            return [f"{path}: writer type {self._describe(writer)} matches no branch of the reader's union"]
        if rk in PRIMITIVES or wk in PRIMITIVES:
            if rk == wk or rk in PROMOTIONS.get(wk, set()):
                return []
            return [f"{path}: writer type {self._describe(writer)} cannot be read as {self._describe(reader)}"]
        if rk != wk:
            return [f"{path}: writer type {wk} cannot be read as {rk}"]
        if rk == "array":
            return self.check(reader["items"], writer["items"], f"{path}[]")
        if rk == "map":
            return self.check(reader["values"], writer["values"], f"{path}{{}}")
        if rk == "enum":
            missing = set(writer["symbols"]) - set(reader["symbols"])
            if missing and "default" not in reader:
                return [f"{path}: reader enum lacks writer symbol(s) {sorted(missing)} and has no default"]
            return []
        if rk == "fixed":
            if reader["size"] != writer["size"]:
                return [f"{path}: fixed size {writer['size']} cannot be read as size {reader['size']}"]
            return []
        return self._check_record(reader, writer, path)

    def _check_record(self, reader: dict, writer: dict, path: str) -> list[str]:
        key = (reader["name"], writer["name"])
        if key in self.seen:  # recursive types: assume compatible on the second visit
            return []
        self.seen.add(key)
        short = lambda n: n.rsplit(".", 1)[-1]  # noqa: E731
        aliases = {short(a) for a in reader.get("aliases", [])}
        if short(reader["name"]) != short(writer["name"]) and short(writer["name"]) not in aliases:
            return [f"{path}: record {writer['name']} cannot be read as record {reader['name']} (add an alias)"]
        writer_fields = {f["name"]: f for f in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            names = [field["name"], *field.get("aliases", [])]
            match = next((writer_fields[n] for n in names if n in writer_fields), None)
            where = f"{path}.{field['name']}"
            if match is None:
                if "default" not in field:
                    problems.append(f"{where}: new field has no default, so older records cannot be read")
                continue
            problems += self.check(field["type"], match["type"], where)
        return problems

    @staticmethod
    def _describe(schema: Any) -> str:
        if isinstance(schema, str):
            return schema
        if isinstance(schema, list):
            return "union"
        return schema.get("name", schema["type"])


def incompatibilities(reader: Any, writer: Any) -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (parsed fastavro schemas); [] if it can."""
    name = reader.get("name", "record") if isinstance(reader, dict) else "value"
    return _Checker(reader, writer).check(reader, writer, name.rsplit(".", 1)[-1])


def check_store(store: SchemaStore) -> list[str]:
    """Every problem found in the store: the current version of each record against every older one."""
    problems = []
    for name, versions in sorted(store.versions.items()):
        current = versions[-1]
        for older in versions[:-1]:
            for problem in incompatibilities(current.parsed, older.parsed):
                problems.append(
                    f"{name} v{current.version} ({current.path.name}) cannot read "
                    f"v{older.version} ({older.path.name}): {problem}"
                )
    return problems
