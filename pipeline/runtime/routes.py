"""A client for the JSON routes a running stage serves on its web port (search, stats, quality)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pipeline.config import Topology


class StageUnreachable(Exception):
    """No stage worker answered on its web port."""


def call_route(topology: Topology, stage: str, path: str, body: dict[str, Any] | None = None,
               host: str = "127.0.0.1", timeout: float = 30) -> Any:
    """POST a JSON body to a running stage's route (replica 0) and return its JSON answer; with no body,
    GET the page and return its text."""
    url = f"http://{host}:{topology.stages[stage].web_port}{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        raise StageUnreachable(f"{url}: HTTP {exc.code} {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise StageUnreachable(f"{url}: {exc}") from None
    return text.decode() if body is None else json.loads(text)
