"""Extract the openAPIV3Schema of each version of a CustomResourceDefinition YAML into GROUP_VERSION_KIND.json here.

Usage: python k8s/schemas/crd_to_schema.py CRD.yaml [--version v1]
Descriptions are dropped (they do not take part in validation); everything else is kept as upstream wrote it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
# Keywords whose values are data, not schemas: kept verbatim.
VERBATIM = {"enum", "default", "example", "required", "x-kubernetes-list-map-keys"}


def without_descriptions(node: Any) -> Any:
    """The schema without `description` keywords; property *names* that happen to be "description" stay."""
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key in VERBATIM:
            out[key] = value
        elif key in ("properties", "patternProperties"):
            out[key] = {name: without_descriptions(schema) for name, schema in value.items()}
        else:
            out[key] = without_descriptions(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path)
    parser.add_argument("--version", help="Only this API version (default: every served version).")
    args = parser.parse_args()
    for crd in yaml.safe_load_all(args.crd.read_text(encoding="utf-8")):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            if (args.version and version["name"] != args.version) or not version.get("served", True):
                continue
            schema = without_descriptions(version["schema"]["openAPIV3Schema"])
            name = f"{spec['group']}_{version['name']}_{spec['names']['kind'].lower()}.json"
            (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(f"wrote {name}")


if __name__ == "__main__":
    main()
