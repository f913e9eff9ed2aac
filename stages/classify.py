"""Classify: label each embedded passage, zero-shot from label descriptions or with a trained head."""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.stage import Incoming, Reject, Result, Stage
from stages.classifier import Head, zero_shot_id
from stages.model import DEFAULT_MODEL, encode, from_bytes, load_model, model_id


class ClassifyStage(Stage):
    def setup(self) -> None:
        self.mode = self.options.get("mode", "zero-shot")
        self.model_name = self.options.get("model", DEFAULT_MODEL)
        self.model_id = model_id(self.model_name)
        if self.mode == "trained":
            self.head = Head.load(self.options["head"])
            if self.head.model_id != self.model_id:
                raise ConfigError(
                    f"classifier head {self.options['head']} was trained on {self.head.model_id} embeddings, "
                    f"but stages.{self.name}.options.model is {self.model_id}: retrain it with this model"
                )
            self.labels, self.classifier_id = self.head.labels, self.head.id
        elif self.mode == "zero-shot":
            described: dict[str, str] = self.options.get("labels") or {}
            if not described:
                raise ConfigError(f"stages.{self.name}.options.labels: give each label a description")
            self.labels = list(described)
            label_vectors = encode(load_model(self.model_name, self.options.get("device", "auto")),
                                   list(described.values()))
            self.label_vectors = label_vectors.T
            self.classifier_id = zero_shot_id(described, self.model_id)
        else:
            raise ConfigError(f"stages.{self.name}.options.mode: '{self.mode}' is not zero-shot or trained")

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return self.head.scores(vectors) if self.mode == "trained" else vectors @ self.label_vectors

    def process(self, batch: list[Incoming]) -> list[Result]:
        results: list[Result | None] = [None] * len(batch)
        rows = []
        for i, item in enumerate(batch):
            if item.value["model_id"] != self.model_id:
                results[i] = Reject("model-mismatch", f"embedded by {item.value['model_id']}, "
                                                      f"the classifier expects {self.model_id}")
            else:
                rows.append(i)
        if rows:
            scores = self.scores(np.stack([from_bytes(batch[i].value["vector"]) for i in rows]))
            for i, row in zip(rows, scores):
                best = int(row.argmax())
                results[i] = [{
                    **batch[i].value, "label": self.labels[best], "score": float(row[best]),
                    "scores": {label: float(s) for label, s in zip(self.labels, row)},
                    "classifier_id": self.classifier_id,
                }]
        return results
