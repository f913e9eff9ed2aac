"""Builds the bundled sample: docstrings of the Python standard library, labelled by area (PSF licence)."""

from __future__ import annotations

import importlib
import inspect
import json
import random
import sys
from pathlib import Path

AREAS = {
    "networking": ["socket", "ssl", "http.client", "http.server", "http.cookiejar", "urllib.request",
                   "urllib.parse", "smtplib", "ftplib", "poplib", "imaplib", "socketserver", "ipaddress",
                   "xmlrpc.client", "selectors"],
    "text": ["string", "re", "textwrap", "difflib", "unicodedata", "codecs", "html", "html.parser",
             "locale", "gettext", "shlex", "stringprep"],
    "data-formats": ["json", "csv", "configparser", "plistlib", "xml.etree.ElementTree", "xml.dom.minidom",
                     "tomllib", "base64", "binascii", "pickle", "struct", "zipfile", "tarfile", "gzip",
                     "email.message", "mailbox", "wave"],
    "concurrency": ["threading", "multiprocessing", "multiprocessing.pool", "concurrent.futures",
                    "asyncio", "queue", "sched", "subprocess", "contextvars", "_thread"],
    "maths": ["math", "cmath", "decimal", "fractions", "random", "statistics", "numbers", "operator",
              "bisect", "heapq"],
    "files": ["os.path", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "fileinput",
              "stat", "io", "os", "linecache"],
}


def docstrings(module_name: str) -> list[tuple[str, str]]:
    module = importlib.import_module(module_name)
    found = []
    if module.__doc__:
        found.append((module_name, module.__doc__))
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) not in (module_name, module.__name__):
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            if obj.__doc__:
                found.append((f"{module_name}.{name}", obj.__doc__))
            if inspect.isclass(obj):
                for attr, member in sorted(vars(obj).items()):
                    doc = getattr(member, "__doc__", None)
                    if not attr.startswith("_") and callable(member) and doc:
                        found.append((f"{module_name}.{name}.{attr}", doc))
    return found


def main(out_dir: Path) -> None:
    rng = random.Random(7)
    docs, seen = [], set()
    for label, modules in AREAS.items():
        for module_name in dict.fromkeys(modules):
            for qualname, doc in docstrings(module_name):
                text = inspect.cleandoc(doc)
                if len(text) < 120 or text in seen:
                    continue
                seen.add(text)
                docs.append({"doc_id": f"py:{qualname}", "title": qualname, "text": text,
                             "source": f"Python {sys.version.split()[0]} standard library, module {module_name}",
                             "metadata": {"label": label, "module": module_name}})
    per_label: dict[str, list[dict]] = {}
    for doc in docs:
        per_label.setdefault(doc["metadata"]["label"], []).append(doc)
    sample, train = [], []
    for label, items in sorted(per_label.items()):
        rng.shuffle(items)
        sample += items[:60]
        train += [{"text": d["text"], "label": label} for d in items[60:160]]
    rng.shuffle(sample)
    rng.shuffle(train)
    (out_dir / "sample.jsonl").write_text("".join(json.dumps(d) + "\n" for d in sample))
    (out_dir / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in train))
    print(f"{len(sample)} sample documents, {len(train)} training examples")


if __name__ == "__main__":
    main(Path(__file__).parent)
