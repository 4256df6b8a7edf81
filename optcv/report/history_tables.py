"""`optcv history` in the terminal: a case's runs, the runs recorded, the steps found, as tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optcv.history.ingest import NothingTimed
from optcv.history.records import RunRecord
from optcv.history.store import StoredRun
from optcv.history.trends import CaseTrend, FoundStep
from optcv.report.dashboard import UNITS
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


def new_steps_line(steps: Sequence[FoundStep]) -> str:
    """The new steps for the worse, in one line: what a scheduled run failed on."""
    found = "; ".join(f"{f.case} {UNITS.get(f.metric, f.metric)} {f.step.change_pct:+.1f} % on {f.machine.label()}, "
                      f"between {(f.last_before.commit or '?')[:10]} and {(f.first_after.commit or '?')[:10]}"
                      for f in steps)
    return f"NEW STEP FOR THE WORSE: {found} (bisect: optcv bisect --good BEFORE --bad AFTER)"


def steps_markdown(steps: Sequence[FoundStep]) -> str:
    if not steps:
        return "no step found"
    rows = [{"": "worse" if f.worse else "better", "case": f.case, "measure": UNITS.get(f.metric, f.metric),
             "change": f"{f.step.change_pct:+.1f} %",
             "between": f"{(f.last_before.commit or '?')[:10]} → {(f.first_after.commit or '?')[:10]}",
             "machine": f.machine.label()} for f in steps]
    return markdown_table(rows)


def import_line(path: Path, result: RunRecord | NothingTimed, run_id: int | None) -> str:
    """What `optcv history import` did with one file."""
    if isinstance(result, NothingTimed):
        return (f"nothing imported from {path}: a gate that timed nothing (base {result.base} and head {result.head} "
                "ran the same timed code)")
    return (f"run {run_id}: {path} ({result.kind}, {len(result.measurements)} numbers, "
            f"commit {(result.commit or 'not recorded')[:12]})")
