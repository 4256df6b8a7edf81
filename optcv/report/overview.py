"""The dashboard's first view: one row per case and machine with its newest number, a sparkline of its series and
its status, the failing and the stepped-worse rows on top (asv's summary grid does the same), each a link to its
chart below."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from optcv.history.records import CHANGE_PCT, HIGHER_IS_WORSE, INSTRUCTIONS_CHANGE_PCT, MEMORY_CHANGE_PCT
from optcv.history.trends import CaseTrend, MachineSeries
from optcv.report.tables import format_value

# Status, most urgent first: the newest run failed its gate; a step made the series worse; a step made it better.
STATUSES = ("failed", "worse", "better", "steady")
SPARK_POINTS, SPARK_W, SPARK_H = 40, 120, 24
PERCENT_CHANGES = frozenset({CHANGE_PCT, MEMORY_CHANGE_PCT, INSTRUCTIONS_CHANGE_PCT})


@dataclass(frozen=True)
class OverviewRow:
    chart: str  # the chart's element id
    case: str
    metric: str
    machine: str
    status: str
    runs: int
    value: float
    low: float | None
    high: float | None
    commit: str
    spark: tuple[float, ...]  # the newest SPARK_POINTS values, oldest first


def _status(trend: CaseTrend, series: MachineSeries) -> str:
    if series.points[-1].measurement.failed:
        return "failed"
    worse_up = HIGHER_IS_WORSE.get(trend.metric, True)
    if any(step.up == worse_up for step in series.steps):
        return "worse"
    return "better" if series.steps else "steady"


def overview_rows(case_trends: Sequence[CaseTrend]) -> list[OverviewRow]:
    rows = []
    for index, trend in enumerate(case_trends):
        for series in trend.series:
            newest = series.points[-1]
            rows.append(OverviewRow(
                chart=f"chart-{index}", case=trend.case, metric=trend.metric, machine=series.machine.label(),
                status=_status(trend, series), runs=len(series.points), value=newest.measurement.value,
                low=newest.measurement.low, high=newest.measurement.high, commit=(newest.commit or "")[:10],
                spark=tuple(p.measurement.value for p in series.points[-SPARK_POINTS:])))
    return sorted(rows, key=lambda r: (STATUSES.index(r.status), r.case, r.metric, r.machine))


def sparkline(values: Sequence[float], failed: bool) -> str:
    """An inline SVG of the values, scaled to its own range; the newest point marked (red when it failed)."""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = (SPARK_W - 4) / max(len(values) - 1, 1)
    xy = [(2 + i * step, SPARK_H - 3 - (v - low) / span * (SPARK_H - 6)) for i, v in enumerate(values)]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    last_x, last_y = xy[-1]
    return (f'<svg class="spark" viewBox="0 0 {SPARK_W} {SPARK_H}" width="{SPARK_W}" height="{SPARK_H}" '
            f'aria-hidden="true"><polyline points="{points}"/><circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2.5" '
            f'class="{"failed" if failed else "newest"}"/></svg>')


def _number(value: float, metric: str) -> str:
    return f"{value:+.1f} %" if metric in PERCENT_CHANGES else format_value(value)


def overview_html(rows: Sequence[OverviewRow], units: dict[str, str]) -> str:
    if not rows:
        return "<p>No case has a run yet.</p>"
    cells = []
    for r in rows:
        interval = ("" if r.low is None or r.high is None
                    else f" ({_number(r.low, r.metric)} … {_number(r.high, r.metric)})")
        cells.append(
            f'<tr class="status-{r.status}"><td class="status">{r.status}</td>'
            f'<td><a href="#{r.chart}"><code>{html.escape(r.case)}</code></a></td>'
            f"<td>{html.escape(units.get(r.metric, r.metric))}</td><td>{html.escape(r.machine)}</td>"
            f'<td class="num">{_number(r.value, r.metric)}{interval}</td><td><code>{html.escape(r.commit)}</code></td>'
            f"<td>{sparkline(r.spark, r.status == 'failed')}</td><td class=\"num\">{r.runs}</td></tr>")
    return ('<table id="overview"><thead><tr><th>status</th><th>case</th><th>measure</th><th>machine</th>'
            "<th>newest (95 % interval)</th><th>commit</th><th>trend</th><th>runs</th></tr></thead><tbody>"
            + "".join(cells) + "</tbody></table>")
