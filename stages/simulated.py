"""A simulated accelerator for the embed stage (`device: sim`): a stand-in for the model's forward pass that spends
a calibrated time per pass and per padded token with the GIL released, as a GPU kernel does, so the runtime's
ceiling under a fast model can be measured on any machine. Its vectors are deterministic unit vectors, not
embeddings: a benchmark and test tool, never for real data."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

# About 20,000 passages/s of the sample's passages (141 word pieces on average) in the embed stage's GPU passes
# (length-sorted, at most 32,768 padded tokens and 512 passages each); `python -m bench --parts sim` prints the
# rate on the run's own passages.
PASS_S = 0.0005
TOKEN_S = 0.235e-6


class SimulatedAccelerator:
    """encode_ids() as the real model's, in `PASS_S + TOKEN_S x padded tokens` of sleep (the GIL released)."""

    device = SimpleNamespace(type="sim")

    def __init__(self, dim: int = 384, max_seq_length: int = 256, pass_s: float = PASS_S,
                 token_s: float = TOKEN_S) -> None:
        self.max_seq_length = max_seq_length
        self.pass_s, self.token_s = pass_s, token_s
        table = np.random.default_rng(7).standard_normal((1024, dim)).astype(np.float32)
        self.table = table / np.linalg.norm(table, axis=1, keepdims=True)

    def seconds(self, batch: list[list[int]]) -> float:
        """What one pass over these texts costs: their count times the longest is the padded size."""
        return self.pass_s + self.token_s * len(batch) * max(map(len, batch))

    def encode_ids(self, batch: list[list[int]]) -> np.ndarray:
        time.sleep(self.seconds(batch))
        return self.table[[hash(tuple(ids)) % len(self.table) for ids in batch]]
