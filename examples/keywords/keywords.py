"""Keywords: reads ClassifiedPassage from docs.classified, writes KeywordsPassage to docs.keywords."""

from __future__ import annotations

import yake

from pipeline import Incoming, Options, Reject, Result, Stage


class KeywordsStage(Stage):
    """The passage's most telling words (YAKE, no model to download), lowercased, best first."""

    class Options(Options):
        """stages.keywords.options in topics.yaml, validated when the stage loads (unknown keys are refused)."""

        top_k: int = 5  # keywords kept per passage
        max_words: int = 1  # longest keyphrase, in words (1: single words, the easiest to filter on)
        language: str = "en"

    def setup(self) -> None:
        """Runs once in the worker before the first batch: load models and open connections here."""
        # Ask for extra candidates: lowercasing can merge two of them ("Socket" and "socket").
        self.extractor = yake.KeywordExtractor(lan=self.options.language, n=self.options.max_words,
                                               top=self.options.top_k * 2)

    def keywords(self, text: str) -> list[str]:
        found: list[str] = []
        for phrase, _score in self.extractor.extract_keywords(text):  # best (lowest score) first
            if phrase.lower() not in found:
                found.append(phrase.lower())
        return found[: self.options.top_k]

    def process(self, batch: list[Incoming]) -> list[Result]:
        """One result per input, in order: the output records it makes (a list, maybe empty), or
        Reject(reason, message) from `pipeline` to send the input to the dead-letter topic."""
        results: list[Result] = []
        for item in batch:
            record = item.value
            if record.get("deleted"):  # a delete marker (the document was deleted) passes through
                results.append([{**record, "keywords": []}])
                continue
            if not record["text"].strip():
                results.append(Reject("empty-text", "the passage has no text to take keywords from"))
                continue
            results.append([{**record, "keywords": self.keywords(record["text"])}])
        return results
