"""Classifiers over embeddings: zero-shot from label descriptions, and a trained softmax head."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError


@dataclass
class Head:
    """A linear layer + softmax: scores = softmax(x @ weights + bias)."""

    labels: list[str]
    weights: np.ndarray  # (dim, labels)
    bias: np.ndarray  # (labels,)
    model_id: str

    @property
    def id(self) -> str:
        digest = hashlib.sha256(self.weights.tobytes() + self.bias.tobytes()).hexdigest()[:10]
        return f"head:{digest}"

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        logits = vectors @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        np.savez(path, weights=self.weights, bias=self.bias,
                 meta=json.dumps({"labels": self.labels, "model_id": self.model_id}))

    @classmethod
    def load(cls, path: str | Path) -> Head:
        try:
            data = np.load(path, allow_pickle=False)
            meta = json.loads(str(data["meta"]))
            return cls(meta["labels"], data["weights"], data["bias"], meta["model_id"])
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{path}: not a classifier head saved by `pipeline classifier train` ({exc})") from None


def train_head(vectors: np.ndarray, labels: list[str], model_id: str, l2: float = 1e-3, epochs: int = 300) -> Head:
    """Multinomial logistic regression fitted by full-batch L-BFGS in torch (the data is small)."""
    import torch

    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])
    x = torch.tensor(vectors, dtype=torch.float32)
    layer = torch.nn.Linear(x.shape[1], len(names))
    optimiser = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=epochs, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x), y) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(loss_fn)
    weights = layer.weight.detach().numpy().T.astype(np.float32)
    return Head(names, weights, layer.bias.detach().numpy().astype(np.float32), model_id)


def zero_shot_id(labels: dict[str, str], model_id: str) -> str:
    digest = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:10]
    return f"zero-shot:{digest}@{model_id}"


def quality(truth: list[str], predicted: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 (over the true labels) of predictions."""
    labels = sorted(set(truth))
    f1s = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(truth, predicted))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(truth) if truth else 0.0
    return {"n": len(truth), "accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}
