"""Markdown rendering of evaluation results."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["format_results_table"]


def _format_value(value: Any, float_format: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, float_format)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        # numpy / torch scalars print like their python counterparts.
        return _format_value(value.item(), float_format)
    return str(value)


def _cell(text: Any) -> str:
    # A literal "|" would end the cell early in markdown.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def format_results_table(
    results: Mapping[str, Mapping[str, float]] | Mapping[str, float],
    float_format: str = ".4f",
    row_header: str = "",
) -> str:
    """Render evaluation results as a markdown table.

    Args:
        results: either flat ``{metric: value}``, rendered as a two-column ``Metric | Value`` table, or nested
            ``{row_name: {metric: value}}`` (e.g. one row per task or per model), rendered with one column per metric
            in first-seen order; a metric a row lacks shows ``-``.
        float_format: format spec applied to floats (ints, such as sample counts, are printed as is).
        row_header: heading of the first column of a nested table.

    Returns:
        The table, lines joined with ``"\\n"`` and no trailing newline.

    Raises:
        TypeError: when row values mix nested mappings and scalars.
    """
    if not results:
        return _row(["Metric", "Value"]) + "\n" + _row(["---", "---"])
    nested = [isinstance(value, Mapping) for value in results.values()]
    if any(nested) and not all(nested):
        raise TypeError("results must map either every key to a metrics dict or every key to a scalar")

    if not any(nested):
        lines = [_row(["Metric", "Value"]), _row(["---", "---:"])]
        lines += [_row([_cell(name), _cell(_format_value(value, float_format))]) for name, value in results.items()]
        return "\n".join(lines)

    columns: list[str] = []
    for metrics in results.values():
        for name in metrics:
            if name not in columns:
                columns.append(name)
    lines = [
        _row([_cell(row_header)] + [_cell(c) for c in columns]),
        _row(["---"] + ["---:"] * len(columns)),
    ]
    for row_name, metrics in results.items():
        cells = [_cell(_format_value(metrics.get(c), float_format)) for c in columns]
        lines.append(_row([_cell(row_name)] + cells))
    return "\n".join(lines)
