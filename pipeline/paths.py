"""Where the project keeps state outside the repo: downloaded jars, the dev broker, Faust's data folders."""

from __future__ import annotations

import os
from pathlib import Path

def cache_home() -> Path:
    """Where downloaded jars and the dev broker's state live (outside the repo, kept between runs)."""
    return Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "kafka-ai-pipeline"))
