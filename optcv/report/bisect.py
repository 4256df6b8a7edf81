"""The bisect's report: each step as it was taken, and what it found, or why it could not."""

from __future__ import annotations

from typing import Any

from optcv.history.bisect import BisectResult, BisectStep, Outcome
from optcv.report.tables import markdown_table


def _change(step: BisectStep) -> str:
    f = step.judgement.finding
    if f is None:
        return "—"
    return f"{f.change_pct:+.1f} % ({f.ci_low_pct:+.1f} … {f.ci_high_pct:+.1f}), {f.rounds} rounds"


def bisect_rows(result: BisectResult) -> list[dict[str, Any]]:
    order = {c: i + 1 for i, c in enumerate(result.candidates)}
    rows = []
    for number, step in enumerate(result.steps, 1):
        j = step.judgement
        how = (f"same timed code as {step.reused_from[:10]}" if step.reused_from
               else "from the history" if j.attempts == 0 else f"timed {j.attempts}x")
        rows.append({"step": number, "commit": step.commit[:10], "position": f"{order[step.commit]}/"
                     f"{len(result.candidates)}", "subject": result.subjects.get(step.commit, "")[:60],
                     "verdict": j.verdict.value, "change vs good (95 % CI)": _change(step),
                     "case": j.finding.case if j.finding else "—", "how": how})
    return rows


def bisect_markdown(result: BisectResult) -> str:
    good = f"{result.good[:10]} ({result.subjects.get(result.good, '')[:50]})"
    lines = [f"## optcv bisect: {_headline(result)}", "",
             f"- good: {good}; bad: {result.bad[:10]}; {len(result.candidates)} candidate commit(s)",
             f"- cases: {' '.join(result.cases)}; threshold {result.threshold_pct:g} %; each candidate timed against "
             "the good commit, side by side; slower = the gate's rule (interval above 0, change above the "
             "threshold); not slower = every interval below the threshold", "",
             markdown_table(bisect_rows(result))]
    return "\n".join(lines) + "\n"


def _headline(result: BisectResult) -> str:
    if result.outcome is Outcome.FOUND:
        step = result.culprit
        assert step is not None
        finding = step.judgement.finding
        change = f", {_change(step)} on {finding.case}" if finding else ""
        return f"first slower commit {step.commit[:12]} \"{result.subjects.get(step.commit, '')}\"{change}"
    if result.outcome is Outcome.BAD_NOT_SLOWER:
        return "the bad commit is not slower than the good one here: nothing to find (check --case and --threshold)"
    where = f"{result.last_not_slower[:10]}..{(result.first_slower or result.bad)[:10]}"
    return (f"inconclusive: a step stayed within noise of the threshold after re-timing; the first slower commit "
            f"is in {where}")
