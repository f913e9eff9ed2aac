"""Keywords: reads ClassifiedPassage from docs.classified, writes KeywordsPassage to docs.keywords."""

from __future__ import annotations

from pipeline import Incoming, Options, Result, Stage


class KeywordsStage(Stage):
    """TODO: one line on what this stage adds to each record."""

    class Options(Options):
        """stages.keywords.options in topics.yaml, validated when the stage loads (unknown keys are refused).
        Declare fields here, e.g. `top_k: int = 5`, and read them as self.options.top_k."""

    def setup(self) -> None:
        """Runs once in the worker before the first batch: load models and open connections here."""

    def process(self, batch: list[Incoming]) -> list[Result]:
        """One result per input, in order: the output records it makes (a list, maybe empty), or
        Reject(reason, message) from `pipeline` to send the input to the dead-letter topic."""
        results: list[Result] = []
        for item in batch:
            record = item.value
            # TODO: compute `keywords` from the record (e.g. record["text"]) and set it.
            results.append([{**record, "keywords": []}])
        return results
