"""Markdown tables of results: :func:`compare_markdown` and the table helpers of :mod:`quantcl.results`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.results import ContinualResult

__all__ = ["compare_markdown", "markdown_table", "fmt"]


def compare_markdown(results: Mapping[str, ContinualResult], digits: int = 3) -> str:
    """Several runs' :meth:`~ContinualResult.summary_row` side by side, one row per run.

    Columns are ``run`` then the union of the rows' keys in first-seen order; a run without a
    column (e.g. other task names) shows ``-``.

    Examples:
        >>> from quantcl.results import ContinualResult
        >>> a = ContinualResult([[0.3, 0.1], [0.9, 0.2], [0.6, 0.8]], ["nlu", "math"])
        >>> compare_markdown({"fp16": a}).splitlines()[0]
        '| run | average_accuracy | bwt | fwt | forgetting | retention | plasticity | final nlu | final math |'
    """
    if not results:
        return ""
    rows = {name: r.summary_row() for name, r in results.items()}
    keys: list[str] = []
    for row in rows.values():
        keys += [k for k in row if k not in keys]
    table = [[name, *(row.get(k) for k in keys)] for name, row in rows.items()]
    return markdown_table(["run", *keys], table, digits)


def fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], digits: int) -> str:
    lines = ["| " + " | ".join(fmt(h, digits) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)
