"""`optcv history trend`: a case's values over its runs as a PNG."""

from __future__ import annotations

import re
from pathlib import Path

from optcv.history.trends import CaseTrend
from optcv.report.dashboard import UNITS
from optcv.report.figures import _figure, _save_figure


def plot_trend(trend: CaseTrend, path: str | Path) -> Path:
    """One case's values over its runs, a line per machine, the interval as a band, failed gates ringed in red,
    steps as dashed lines."""
    fig, ax = _figure(8, 3.6)
    order = sorted((p.recorded_at, p.run_id) for s in trend.series for p in s.points)
    x_of = {run_id: x for x, (_when, run_id) in enumerate(order)}
    for series in trend.series:
        xs = [x_of[p.run_id] for p in series.points]
        ys = [p.measurement.value for p in series.points]
        line, = ax.plot(xs, ys, marker="o", markersize=3, label=series.machine.label())
        banded = [(x, p.measurement) for x, p in zip(xs, series.points, strict=True) if p.measurement.low is not None]
        if banded:
            ax.fill_between([b[0] for b in banded], [b[1].low for b in banded], [b[1].high for b in banded],
                            color=line.get_color(), alpha=0.15)
        failed = [(x, p.measurement.value) for x, p in zip(xs, series.points, strict=True) if p.measurement.failed]
        if failed:
            ax.scatter(*zip(*failed, strict=True), s=60, facecolors="none", edgecolors="red", zorder=3)
        for step in series.steps:
            ax.axvline(xs[step.index] - 0.5, color="red" if step.up else "green", linestyle="--", linewidth=1)
    if trend.metric == "change_pct":
        ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_title(trend.case)
    ax.set_ylabel(UNITS.get(trend.metric, trend.metric))
    ax.set_xlabel("run (oldest first)")
    ax.legend(fontsize=7)
    return _save_figure(fig, path)


def trend_file_name(trend: CaseTrend) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{trend.case}__{trend.metric}") + ".png"
