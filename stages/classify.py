"""Classify: label each embedded passage, zero-shot from label descriptions or with a trained head."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import model_validator

import pipeline
from pipeline import Incoming, Reject, Result, Stage
from pipeline.errors import ConfigError
from stages.classifier import Head, zero_shot_id
from stages.model import DEFAULT_MODEL, encode, from_bytes, load_model, load_tokenizer, model_id


class ClassifyStage(Stage):
    class Options(pipeline.Options):
        mode: Literal["zero-shot", "trained"] = "zero-shot"
        model: str = DEFAULT_MODEL
        device: str = "auto"
        labels: dict[str, str] = {}  # zero-shot: label -> description, embedded by the model
        head: str | None = None  # trained: a head saved by `pipeline classifier train`
        models: list[str] = []  # zero-shot: further models whose vectors it labels (during a re-embed)

        @model_validator(mode="after")
        def _mode_needs(self) -> ClassifyStage.Options:
            if self.mode == "zero-shot" and not self.labels:
                raise ValueError("mode zero-shot needs labels: {label: description, ...}")
            if self.mode == "trained" and not self.head:
                raise ValueError("mode trained needs head: PATH (from `pipeline classifier train`)")
            return self

    options: Options

    def setup(self) -> None:
        self.mode = self.options.mode
        self.model_name = self.options.model
        self.model_id = model_id(self.model_name)
        if self.mode == "trained":
            self.head = Head.load(self.options.head)
            if self.head.model_id != self.model_id:
                raise ConfigError(
                    f"classifier head {self.options.head} was trained on {self.head.model_id} embeddings, "
                    f"but stages.{self.name}.options.model is {self.model_id}: retrain it with this model"
                )
            self.labels = self.head.labels
        else:
            self.described: dict[str, str] = self.options.labels
            self.labels = list(self.described)
            # Models whose vectors this stage can label (several while a re-embed runs beside the live one).
            self.loadable = {model_id(n): n for n in [self.model_name, *self.options.models]}
            self.label_vectors: dict[str, np.ndarray] = {}
            self._label_vectors(self.model_id)

    def _label_vectors(self, model: str) -> np.ndarray:
        if model not in self.label_vectors:
            found = encode(load_model(self.loadable[model], self.options.device),
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
            if item.value.get("deleted"):  # a delete marker passes through without model work
                results[i] = [{**item.value, "label": "", "score": 0.0, "scores": {}, "classifier_id": ""}]
            elif self.knows(model):
                by_model.setdefault(model, []).append(i)
            else:
                hint = "a head trained on it" if self.mode == "trained" else f"it in stages.{self.name}.options.models"
                results[i] = Reject("model-mismatch", f"embedded by {model}; the classifier needs {hint}")
        for model, rows in by_model.items():
            vectors = from_bytes(b"".join(batch[i].value["vector"] for i in rows)).reshape(len(rows), -1)
            scores = self.scores(model, vectors)
            classifier_id = self.classifier_id_for(model)
            for i, row, best in zip(rows, scores.tolist(), scores.argmax(axis=1).tolist()):
                results[i] = [{
                    **batch[i].value, "label": self.labels[best], "score": row[best],
                    "scores": dict(zip(self.labels, row)), "classifier_id": classifier_id,
                }]
        return results

    # The gateway's capability (pipeline.gateway.serving.Servable): label texts online with this stage's model.
    def token_counts(self, texts: list[str]) -> list[int]:
        tokenizer = load_tokenizer(self.model_name)
        return [len(e.ids) + 2 for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    def token_limits(self) -> tuple[int, int]:
        return self._model().max_seq_length, 2048 if self._model().device.type == "cpu" else 32768

    def _model(self) -> Any:
        return load_model(self.model_name, self.options.device)

    def serve(self, texts: list[str], tokens: list[int]) -> list[dict[str, Any]]:
        """The label of each text: embedded by the stage's model, then scored as an embedded passage is."""
        scores = self.scores(self.model_id, encode(self._model(), texts, batch_size=len(texts)))
        classifier_id = self.classifier_id_for(self.model_id)
        return [{"model_id": self.model_id, "classifier_id": classifier_id, "label": self.labels[best],
                 "score": row[best], "scores": dict(zip(self.labels, row))}
                for row, best in zip(scores.tolist(), scores.argmax(axis=1).tolist())]
