"""The benchmark's one table: a Row per figure, divided by its reference, against its target; and the parts
registry that fills it.

A part is a function that measures (its figures go to results[name]) and a function that turns the results
into rows. A new part lives in its own module and registers itself:

    @part("search", "Query latency and recall against a brute-force reference.", rows=search_rows)
    def search(ctx: Context) -> dict: ...

and is imported once in bench/__main__.py; `python -m bench --parts search` then runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.context import Context


@dataclass(frozen=True)
class Row:
    """One figure, the reference it is divided by, and the target for that ratio.

    A row without a reference is a reference itself (the model ceiling, a bare Faust agent). `at_most` flips
    the target into an upper bound (latency ÷ its limit ≤ 1). `target` may be None: a ratio shown for
    information."""

    part: str
    label: str
    figure: float
    unit: str
    reference_label: str | None = None
    reference: float | None = None
    target: float | None = None
    at_most: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or not self.reference or math.isnan(self.figure):
            return None
        return self.figure / self.reference

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        return self.ratio <= self.target if self.at_most else self.ratio >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


@dataclass(frozen=True)
class Part:
    name: str
    help: str
    run: Callable[["Context"], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[Row]]
    broker: bool  # needs a Kafka broker
    default: bool  # runs when --parts is not given


PARTS: dict[str, Part] = {}  # in registration order, which is the table's order


def part(name: str, help: str, rows: Callable[[dict[str, Any]], list[Row]], broker: bool = True,
         default: bool = True) -> Callable[[Callable[["Context"], dict[str, Any]]], Callable]:
    """Register a benchmark part: the decorated function measures and returns its figures (a JSON-able dict,
    saved as results[name]); `rows(results)` turns the results of the whole run into table rows."""
    def register(run: Callable[["Context"], dict[str, Any]]) -> Callable:
        if name in PARTS:
            raise ValueError(f"benchmark part {name!r} is registered twice")
        PARTS[name] = Part(name, help, run, rows, broker, default)
        return run

    return register


def all_rows(results: dict[str, Any]) -> list[Row]:
    """The rows of every part that has results, in the registry's order."""
    rows: list[Row] = []
    for p in PARTS.values():
        if p.name in results:
            rows += p.rows(results)
    return rows
