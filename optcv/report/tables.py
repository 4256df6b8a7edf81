"""Tables and the formatting of single figures: how every number optcv prints looks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   digits: int | None = None) -> str:
    """A GitHub-style table whose columns line up in a terminal too; `digits` fixes the decimals of every
    float (a column of percentages must not print 6.500 beside 50.4)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        fixed = digits is not None and isinstance(value, float)
        return f"{value:.{digits}f}" if fixed else format_value(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row.get(c)) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def speedup_text(ratio: float, low: float, high: float) -> str:
    return f"{ratio:.2f}× ({low:.2f}–{high:.2f})"


def throughput_text(throughput: dict[str, Any]) -> str:
    """Batched images/s with its interval and rounds where measured so (results before they were: the bare
    figure)."""
    rate = f"{throughput['images_per_s']:,.0f}"
    if "ci_low" not in throughput:
        return rate
    return f"{rate} ({throughput['ci_low']:,.0f}–{throughput['ci_high']:,.0f}, n={throughput['rounds']})"


def signed_pct(value: float) -> str:
    return f"{value:+.1f} %"


def size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"
