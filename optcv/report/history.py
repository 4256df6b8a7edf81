"""`optcv history` in the terminal and as pictures: a case's runs as a table, its trend as a PNG per case."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optcv.history.store import StoredRun
from optcv.history.trends import CaseTrend, FoundStep
from optcv.report.dashboard import UNITS
from optcv.report.figures import _figure, _save_figure
from optcv.report.tables import format_value, markdown_table


def trend_rows(trend: CaseTrend) -> list[dict[str, Any]]:
    rows = []
    for series in trend.series:
        starts = {s.index for s in series.steps}
        for i, p in enumerate(series.points):
            m = p.measurement
            rows.append({"run": p.run_id, "time": p.recorded_at.strftime("%Y-%m-%d %H:%M"),
                         "commit": (p.commit or "—")[:10], "kind": p.kind, "machine": series.machine.label(),
                         "value": m.value,
                         "95 % interval": "—" if m.low is None else f"{format_value(m.low)} … {format_value(m.high)}",
                         "verdict": m.verdict or "", "step": "← step" if i in starts else ""})
    return rows


def trend_markdown(trend: CaseTrend) -> str:
    unit = UNITS.get(trend.metric, trend.metric)
    if not trend.series:
        return f"{trend.case}: no {unit} recorded"
    return f"### {trend.case} · {unit}\n\n" + markdown_table(trend_rows(trend))


def runs_rows(runs: Sequence[StoredRun]) -> list[dict[str, Any]]:
    return [{"run": r.id, "time": r.record.recorded_at.strftime("%Y-%m-%d %H:%M"), "kind": r.record.kind,
             "commit": (r.record.commit or "—")[:10], "branch": r.record.branch or "—",
             "passed": "—" if r.record.passed is None else ("yes" if r.record.passed else "no"),
             "cases": len({m.case for m in r.record.measurements}), "machine": r.record.machine.label()} for r in runs]


def steps_markdown(steps: Sequence[FoundStep]) -> str:
    if not steps:
        return "no step found"
    rows = [{"": "worse" if f.worse else "better", "case": f.case, "measure": UNITS.get(f.metric, f.metric),
             "change": f"{f.step.change_pct:+.1f} %",
             "between": f"{(f.last_before.commit or '?')[:10]} → {(f.first_after.commit or '?')[:10]}",
             "machine": f.machine.label()} for f in steps]
    return markdown_table(rows)


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
