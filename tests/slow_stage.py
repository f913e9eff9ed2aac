"""A pass-through stage that takes its time over each batch and says when it holds one (test stage)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pipeline
from pipeline import Incoming, Result, Stage


class SlowStage(Stage):
    class Options(pipeline.Options):
        delay_s: float = 1.0  # per batch
        marker: str | None = None  # a file written (with the worker's pid) when a batch starts

    def process(self, batch: list[Incoming]) -> list[Result]:
        if self.options.marker:
            Path(self.options.marker).write_text(str(os.getpid()))
        time.sleep(self.options.delay_s)
        return [[dict(item.value)] for item in batch]
