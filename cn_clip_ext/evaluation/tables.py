"""Markdown tables of results: a row per model, a column per data set (the one layout every report table shares)."""
from __future__ import annotations

from typing import Callable, Mapping, TypeVar

R = TypeVar("R")

MISSING = "–"
"""The cell of a data set a model was not scored on."""


def model_grid(results: Mapping[str, Mapping[str, R]], cell: Callable[[R], str]) -> tuple[list[str], list[str]]:
    """``(data sets, lines)``: the header, its rule and one line per model, each cell ``cell(result)``.

    Data sets are the columns in their first-seen order; append baseline rows with :func:`row`.
    """
    datasets = list(dict.fromkeys(d for per in results.values() for d in per))
    lines = ["| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for model, per in results.items():
        lines.append(row(model, [cell(per[d]) if d in per else MISSING for d in datasets]))
    return datasets, lines


def row(label: str, cells: list[str]) -> str:
    """One table line."""
    return f"| {label} | " + " | ".join(cells) + " |"


__all__ = ["MISSING", "model_grid", "row"]
