"""Preprocess: normalise raw documents and split them into passages that fit the model's input."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from html.parser import HTMLParser

from pydantic import Field

import pipeline
from pipeline import Incoming, Reject, Result, Stage
from stages.model import DEFAULT_MODEL, ids_to_bytes, load_tokenizer, special_ids, tokenizer_id

_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_CONTROL = {c: " " for c in [*range(0, 9), *range(11, 32), *range(127, 160)]}  # keeps \t and \n
_BLOCK_TAGS = {"p", "br", "div", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
               "blockquote", "section", "article"}


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    if not _TAG.search(text):
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def normalise(text: str) -> list[str]:
    """Sentences of the text: NFC, no HTML or control characters, whitespace collapsed."""
    text = unicodedata.normalize("NFC", strip_html(text)).translate(_CONTROL)
    sentences = []
    for paragraph in _PARAGRAPH.split(text):
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = " ".join(sentence.split())
            if sentence:
                sentences.append(sentence)
    return sentences


def pack(sentences: list[str], lengths: list[int], budget: int, overlap: int) -> list[str]:
    """Greedy packing of whole sentences into passages of at most `budget` tokens, repeating `overlap`
    trailing sentences at the start of the next passage when they fit in half the budget."""
    return [" ".join(sentences[j] for j in group) for group in pack_indices(lengths, budget, overlap)]


def pack_indices(lengths: list[int], budget: int, overlap: int) -> list[list[int]]:
    """pack's passages as the indices of their sentences."""
    passages: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and used + n > budget:
            passages.append(current)
            carried = current[-overlap:] if overlap else []
            while carried and (sum(lengths[j] for j in carried) > budget // 2
                               or sum(lengths[j] for j in carried) + n > budget):
                carried = carried[1:]
            current, used = list(carried), sum(lengths[j] for j in carried)
        current.append(i)
        used += n
    if current:
        passages.append(current)
    return passages


class PreprocessStage(Stage):
    class Options(pipeline.Options):
        model: str = DEFAULT_MODEL  # its tokenizer sizes the passages
        max_tokens: int = Field(256, ge=3)  # the model's input limit, in word pieces
        overlap_sentences: int = Field(1, ge=0)
        max_chars: int = Field(1_000_000, ge=1)  # longer documents are rejected

    options: Options
    accepts_tombstones = True  # a null value keyed by doc id deletes that document: forwarded as a delete marker

    def setup(self) -> None:
        self.tokenizer = load_tokenizer(self.options.model)
        self.tokenizer_id = tokenizer_id(self.options.model)
        # Each passage carries its token ids, so the embed stage need not tokenize it again (TEI tokenizes once too).
        self.specials = special_ids(self.tokenizer)
        self.budget = self.options.max_tokens - 2  # [CLS] and [SEP]
        self.overlap = self.options.overlap_sentences
        self.max_chars = self.options.max_chars

    def _split_long(self, sentence: str) -> tuple[list[str], list[int]]:
        """A sentence over the budget is cut at token boundaries."""
        enc = self.tokenizer.encode(sentence, add_special_tokens=False)
        pieces, lengths = [], []
        for start in range(0, len(enc.ids), self.budget):
            span = enc.offsets[start:start + self.budget]
            pieces.append(sentence[span[0][0]:span[-1][1]])
            lengths.append(len(span))
        return pieces, lengths

    def process(self, batch: list[Incoming]) -> list[Result]:
        docs: list[list[str] | Reject | dict] = []
        for item in batch:
            if item.value is None:
                docs.append(self._delete_marker(item))
                continue
            text = item.value["text"]
            if len(text) > self.max_chars:
                docs.append(Reject("too-large", f"{len(text)} characters, the limit is {self.max_chars}"))
                continue
            sentences = normalise(text)
            docs.append(sentences or Reject("empty-text", "no text left after normalisation"))
        flat = [s for d in docs if isinstance(d, list) for s in d]
        # encode_batch_fast skips character offsets, which counting does not need (a third faster).
        encodings = iter(self.tokenizer.encode_batch_fast(flat, add_special_tokens=False))
        results: list[Result] = []
        for item, doc in zip(batch, docs):
            if isinstance(doc, Reject):
                results.append(doc)
                continue
            if isinstance(doc, dict):
                results.append([doc])
                continue
            sentences: list[str] = []
            lengths: list[int] = []
            ids: list[list[int] | None] = []
            for sentence in doc:
                encoding = next(encodings)
                if len(encoding) > self.budget:  # cut at token boundaries: its pieces' ids are not carried
                    parts, sizes = self._split_long(sentence)
                    sentences += parts
                    lengths += sizes
                    ids += [None] * len(parts)
                else:
                    sentences.append(sentence)
                    lengths.append(len(encoding))
                    ids.append(encoding.ids if self.specials else None)
            results.append(self._passages(item, sentences, ids, pack_indices(lengths, self.budget, self.overlap)))
        return results

    def _delete_marker(self, item: Incoming) -> dict | Reject:
        """A tombstone keyed by doc id -> one Passage with deleted=true and empty content (embed and classify
        pass it on, the store deletes every passage of the document)."""
        try:
            doc_id = item.key.decode() if item.key else ""
        except UnicodeDecodeError:
            doc_id = ""
        if not doc_id:
            return Reject("tombstone-without-key", "a null value deletes the document its key names; this one has "
                          "no (UTF-8) key")
        return {"doc_id": doc_id, "passage_index": 0, "passage_count": 0, "text": "", "content_hash": "",
                "title": None, "source": None, "metadata": {}, "lineage": _lineage(item), "deleted": True}

    def _passages(self, item: Incoming, sentences: list[str], ids: list[list[int] | None],
                  groups: list[list[int]]) -> list[dict]:
        doc = item.value
        lineage = _lineage(item)
        passages = []
        for i, group in enumerate(groups):
            text = " ".join(sentences[j] for j in group)
            token_ids = None
            if self.specials and all(ids[j] is not None for j in group):
                head, tail = self.specials
                token_ids = ids_to_bytes(head + [t for j in group for t in ids[j]] + tail)
            passages.append({
                "doc_id": doc["doc_id"], "passage_index": i, "passage_count": len(groups), "text": text,
                "content_hash": hashlib.sha256(text.encode()).hexdigest(), "title": doc.get("title"),
                "source": doc.get("source"), "metadata": doc.get("metadata") or {}, "lineage": lineage,
                "token_ids": token_ids, "tokenizer_id": self.tokenizer_id if token_ids is not None else None,
            })
        return passages


def _lineage(item: Incoming) -> dict:
    return {"topic": item.topic, "partition": item.partition, "offset": item.offset,
            "ingest_time_ms": item.timestamp_ms}
