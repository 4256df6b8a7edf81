"""The history dashboard: a folder of static pages that works offline (every script and style is in it, nothing
is fetched). index.html opens with an overview (optcv.report.overview: a row per case and machine, failing and
stepped cases first), then draws one chart per case from data.js in a grid; regressions.html lists the steps found;
runs/ID.html holds each run's summary, reached by clicking its point."""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from optcv.errors import OptcvError
from optcv.history.records import (
    CHANGE_PCT,
    HIGHER_IS_WORSE,
    INSTRUCTIONS,
    INSTRUCTIONS_CHANGE_PCT,
    LATENCY_US,
    MEMORY_CHANGE_PCT,
    PEAK_KIB,
    THROUGHPUT,
)
from optcv.history.store import StoredRun
from optcv.history.trends import CaseTrend, FoundStep
from optcv.report.overview import overview_html, overview_rows
from optcv.report.tables import format_value

UNITS = {LATENCY_US: "µs per call", THROUGHPUT: "images/s", CHANGE_PCT: "% change, head vs base",
         PEAK_KIB: "peak KiB", MEMORY_CHANGE_PCT: "% memory change, head vs base",
         INSTRUCTIONS: "instructions per call", INSTRUCTIONS_CHANGE_PCT: "% instructions change, head vs base"}
ASSETS = ("dashboard.js", "dashboard.css")


def write_dashboard(out: Path, case_trends: Sequence[CaseTrend], steps: Sequence[FoundStep],
                    runs: Sequence[StoredRun], database: str, generated: datetime) -> Path:
    """Write the dashboard into `out`; its index. The pages are written into a folder beside it that then takes
    its place, so a reader never sees half a dashboard and an interrupted write leaves the old one whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_pages(staging, case_trends, steps, runs, database, generated)
        _replace_folder(out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


def _write_pages(out: Path, case_trends: Sequence[CaseTrend], steps: Sequence[FoundStep],
                 runs: Sequence[StoredRun], database: str, generated: datetime) -> None:
    (out / "runs").mkdir()
    for name in ASSETS:
        (out / name).write_text(resources.files("optcv.report").joinpath("assets", name).read_text(encoding="utf-8"),
                                encoding="utf-8")
    data = dashboard_data(case_trends, runs, database, generated)
    (out / "data.js").write_text("window.OPTCV_HISTORY = " + json.dumps(data, separators=(",", ":")) + ";\n",
                                 encoding="utf-8")
    (out / "regressions.html").write_text(_page("Steps found", _steps_body(steps), database, generated),
                                          encoding="utf-8")
    for run in runs:
        (out / "runs" / f"{run.id}.html").write_text(_run_page(run, database, generated), encoding="utf-8")
    (out / "index.html").write_text(_index(case_trends, runs, database, generated), encoding="utf-8")


def _replace_folder(out: Path, staging: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    if not (out / "index.html").is_file() and any(out.iterdir()):
        raise OptcvError(f"{out} is a folder that holds something other than an optcv dashboard; give an empty or "
                         "new folder")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def dashboard_data(case_trends: Sequence[CaseTrend], runs: Sequence[StoredRun], database: str,
                   generated: datetime) -> dict[str, Any]:
    runs_per_machine: dict[str, int] = {}
    labels = {}
    for run in runs:
        runs_per_machine[run.record.machine.key] = runs_per_machine.get(run.record.machine.key, 0) + 1
        labels[run.record.machine.key] = run.record.machine.label()
    return {"generated": generated.isoformat(), "database": database,
            "machines": [{"key": k, "label": labels[k], "runs": n} for k, n in runs_per_machine.items()],
            "charts": [_chart(i, t) for i, t in enumerate(case_trends)]}


def _chart(index: int, trend: CaseTrend) -> dict[str, Any]:
    everything = sorted((p.recorded_at, p.run_id) for s in trend.series for p in s.points)
    x_of = {run_id: x for x, (_when, run_id) in enumerate(everything)}
    commits = {p.run_id: (p.commit or "")[:8] for s in trend.series for p in s.points}
    series = []
    for s in trend.series:
        worse_up = HIGHER_IS_WORSE.get(trend.metric, True)
        series.append({
            "machine": s.machine.key,
            "points": [{"x": x_of[p.run_id], "y": _shown(p.measurement.value), "lo": _shown(p.measurement.low),
                        "hi": _shown(p.measurement.high), "run": p.run_id, "commit": (p.commit or "")[:12],
                        "time": p.recorded_at.isoformat(), "kind": p.kind, "failed": p.measurement.failed,
                        "verdict": p.measurement.verdict} for p in s.points],
            "steps": [{"x": x_of[s.points[st.index].run_id], "change_pct": round(st.change_pct, 2),
                       "worse": st.up == worse_up} for st in s.steps]})
    return {"id": f"chart-{index}", "case": trend.case, "metric": trend.metric,
            "unit": UNITS.get(trend.metric, trend.metric), "series": series,
            "x_labels": [[x, commits[run_id]] for x, (_when, run_id) in enumerate(everything)]}


def _shown(value: float | None) -> float | None:
    """Six significant digits, more than a chart or its tooltip (four) shows: with 17, the 1,000-run history's
    data.js was 4.2 MB instead of 3.5."""
    return None if value is None else float(f"{value:.6g}")


def _page(title: str, body: str, database: str, generated: datetime, depth: int = 0, script: bool = False) -> str:
    up = "../" * depth
    scripts = f'<script src="{up}data.js"></script>\n<script src="{up}dashboard.js"></script>\n' if script else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>optcv · {html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{up}dashboard.css">
{scripts}</head>
<body>
<header><h1>optcv · {html.escape(title)}</h1>
<nav><a href="{up}index.html">Charts</a><a href="{up}regressions.html">Steps found</a></nav>
<p>From {html.escape(database)}, {generated.strftime('%Y-%m-%d %H:%M UTC')}.</p></header>
{body}
</body></html>
"""


def _index(case_trends: Sequence[CaseTrend], runs: Sequence[StoredRun], database: str, generated: datetime) -> str:
    sections = "\n".join(
        f'<section class="case" data-case="{html.escape(t.case)} {t.metric}"><h2>{html.escape(t.case)} · '
        f'{html.escape(UNITS.get(t.metric, t.metric))}</h2><div id="chart-{i}"></div></section>'
        for i, t in enumerate(case_trends))
    body = f"""<p class="note">{len(runs)} runs, {len(case_trends)} charts. Each machine (CPU, ISA flags, cores) is
its own series. The overview gives each case's newest number per machine, failing and stepped cases first; below,
a point is one run's number (median, with its 95 % interval as a whisker and band), a ringed point a gate that
failed, a dashed line a step found (red: worse); click a point for its run.</p>
<h2>Overview</h2>
{overview_html(overview_rows(case_trends), UNITS)}
<h2>Charts</h2>
<ul id="machines"></ul>
<p><label>Filter cases: <input id="filter" type="search" placeholder="e.g. resnet18 onnxruntime b1"></label></p>
<div id="charts">
{sections}
</div>"""
    return _page("history", body, database, generated, script=True)


def _steps_body(steps: Sequence[FoundStep]) -> str:
    if not steps:
        return "<p>No step found: no case's level moved beyond the intervals of the runs around it.</p>"
    rows = []
    for f in steps:
        before, after = f.step.before, f.step.after
        good, bad = (f.last_before.commit or "?"), (f.first_after.commit or "?")
        rows.append(
            f'<tr class="{"worse" if f.worse else "better"}"><td>{"worse" if f.worse else "better"}</td>'
            f"<td><code>{html.escape(f.case)}</code></td><td>{html.escape(UNITS.get(f.metric, f.metric))}</td>"
            f'<td class="num">{f.step.change_pct:+.1f} %</td>'
            f'<td class="num">{format_value(before.value)} ({format_value(before.low)} … {format_value(before.high)}),'
            f" n {before.n}</td>"
            f'<td class="num">{format_value(after.value)} ({format_value(after.low)} … {format_value(after.high)}),'
            f" n {after.n}</td>"
            f'<td><a href="runs/{f.last_before.run_id}.html">{good[:10]}</a> → '
            f'<a href="runs/{f.first_after.run_id}.html">{bad[:10]}</a></td>'
            f"<td>{html.escape(f.machine.label())}</td>"
            f"<td><code>optcv bisect --good {good[:12]} --bad {bad[:12]} --case '{html.escape(f.case)}'</code>"
            "</td></tr>")
    return ("<p>Steps in each case's series, per machine: L1 binary segmentation, a step accepted only where the "
            "95 % intervals of the levels before and after do not overlap (optcv.history.steps).</p>"
            "<table><tr><th></th><th>case</th><th>measure</th><th>change</th><th>before</th><th>after</th>"
            "<th>between</th><th>machine</th><th>to find the commit</th></tr>" + "".join(rows) + "</table>")


def _run_page(run: StoredRun, database: str, generated: datetime) -> str:
    r = run.record
    facts = [("kind", r.kind), ("time", r.recorded_at.isoformat()), ("commit", r.commit or "—"),
             ("branch", r.branch or "—"), ("machine", r.machine.label()), ("ISA flags", " ".join(r.machine.isa)),
             ("passed", "—" if r.passed is None else ("yes" if r.passed else "no")), ("source", r.source or "—"),
             ("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items()))]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    rows = "".join(
        f"<tr><td><code>{html.escape(m.case)}</code></td><td>{html.escape(UNITS.get(m.metric, m.metric))}</td>"
        f'<td class="num">{format_value(m.value)}</td><td class="num">'
        f'{"—" if m.low is None else f"{format_value(m.low)} … {format_value(m.high)}"}</td>'
        f'<td class="num">{format_value(m.n)}</td><td>{html.escape(m.verdict or "")}</td></tr>'
        for m in r.measurements)
    summary = f"<h2>Summary</h2><pre>{html.escape(r.summary)}</pre>" if r.summary else ""
    body = (f"<table>{table}</table>{summary}<h2>Numbers</h2><table><tr><th>case</th><th>measure</th><th>value</th>"
            f"<th>95 % interval</th><th>n</th><th>verdict</th></tr>{rows}</table>")
    return _page(f"run {run.id}", body, database, generated, depth=1)
