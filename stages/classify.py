"""Classify: label each embedded passage, zero-shot from label descriptions or with a trained head."""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.runtime.stage import Incoming, Reject, Result, Stage
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
            self.labels = self.head.labels
        elif self.mode == "zero-shot":
            self.described: dict[str, str] = self.options.get("labels") or {}
            if not self.described:
                raise ConfigError(f"stages.{self.name}.options.labels: give each label a description")
            self.labels = list(self.described)
            # Models whose vectors this stage can label (several while a re-embed runs beside the live one).
            self.loadable = {model_id(n): n for n in [self.model_name, *self.options.get("models", [])]}
            self.label_vectors: dict[str, np.ndarray] = {}
            self._label_vectors(self.model_id)
        else:
            raise ConfigError(f"stages.{self.name}.options.mode: '{self.mode}' is not zero-shot or trained")

    def _label_vectors(self, model: str) -> np.ndarray:
        if model not in self.label_vectors:
            found = encode(load_model(self.loadable[model], self.options.get("device", "auto")),
                           list(self.described.values()))
            self.label_vectors[model] = found.T
        return self.label_vectors[model]

    def classifier_id_for(self, model: str) -> str:
        return self.head.id if self.mode == "trained" else zero_shot_id(self.described, model)

    def knows(self, model: str) -> bool:
        return model == self.model_id if self.mode == "trained" else model in self.loadable

    def scores(self, model: str, vectors: np.ndarray) -> np.ndarray:
        return self.head.scores(vectors) if self.mode == "trained" else vectors @ self._label_vectors(model)

    def process(self, batch: list[Incoming]) -> list[Result]:
        results: list[Result | None] = [None] * len(batch)
        by_model: dict[str, list[int]] = {}
        for i, item in enumerate(batch):
            model = item.value["model_id"]
            if self.knows(model):
                by_model.setdefault(model, []).append(i)
            else:
                hint = "a head trained on it" if self.mode == "trained" else f"it in stages.{self.name}.options.models"
                results[i] = Reject("model-mismatch", f"embedded by {model}; the classifier needs {hint}")
        for model, rows in by_model.items():
            scores = self.scores(model, np.stack([from_bytes(batch[i].value["vector"]) for i in rows]))
            classifier_id = self.classifier_id_for(model)
            for i, row, best in zip(rows, scores.tolist(), scores.argmax(axis=1).tolist()):
                results[i] = [{
                    **batch[i].value, "label": self.labels[best], "score": row[best],
                    "scores": dict(zip(self.labels, row)), "classifier_id": classifier_id,
                }]
        return results
