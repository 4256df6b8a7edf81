"""`pytest --gate-against`'s words: a regression's failure line, and the summary of every benchmark test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optcv.gate.pytest_ab import GatedTest, Unpaired
from optcv.gate.sides import Side
from optcv.gate.verdict import CaseFinding
from optcv.report.gate import named_text
from optcv.report.tables import markdown_table, signed_pct


def _interval(finding: CaseFinding) -> str:
    return f"{signed_pct(finding.ci_low_pct)} … {signed_pct(finding.ci_high_pct)}"


def gate_test_failure(outcome: GatedTest) -> str | None:
    """Why the test fails, or None: its assertions on the head side, or a regression beyond its threshold."""
    if outcome.head_failure:
        return f"the test fails on the head side: {outcome.head_failure}"
    if outcome.unpaired is Unpaired.FAILS_ON_HEAD:  # the code under test failed where the gate runs it
        return f"the test fails in the gate's head sessions, so nothing was compared: {outcome.detail}"
    finding = outcome.finding
    if finding is None or not finding.failed:
        return None
    retested = " (confirmed by a re-test with fresh sessions)" if outcome.first_pass else ""
    return (f"SPEED REGRESSION: {finding.case} {signed_pct(finding.change_pct)} (95 % CI {_interval(finding)}; "
            f"base {finding.base_median_us:,.2f} µs → head {finding.head_median_us:,.2f} µs per call; threshold "
            f"{finding.threshold_pct:g} %){retested}{named_text(finding.profile)}")


def _row(outcome: GatedTest) -> dict[str, str]:
    finding = outcome.finding
    if finding is None:
        return {"test": outcome.node, "base µs": "", "head µs": "", "change": "", "95 % CI": "", "resolution": "",
                "threshold": "", "verdict": "not gated"}
    verdict = ("**" + finding.verdict.value.upper() + "**") if finding.failed else finding.verdict.value
    return {"test": outcome.node, "base µs": f"{finding.base_median_us:,.2f}",
            "head µs": f"{finding.head_median_us:,.2f}", "change": signed_pct(finding.change_pct),
            "95 % CI": _interval(finding), "resolution": f"±{finding.half_width_pct:.1f} %",
            "threshold": f"{finding.threshold_pct:g} %", "verdict": verdict + (" (re-tested)" if outcome.first_pass
                                                                               else "")}


def summary_lines(against: str, sides: tuple[Side, Side] | None, outcomes: Sequence[GatedTest],
                  gone: Sequence[str], left_out: Mapping[str, str] | None = None,
                  same_code: str | None = None) -> list[str]:
    """The table of every benchmark test, then one line per test that was not gated, said why, and the notes."""
    if sides is not None and same_code:
        return [f"base {sides[0].revision or sides[0].tree} and head hold the same code (hash {same_code[:12]} of "
                "their code, declarations and settings files) under the same interpreter: nothing was timed A/B, and "
                "the tests ran as pytest-benchmark alone (--gate-even-if-unchanged times them anyway)"]
    if sides is not None:
        base, head = sides
        lines = [f"base {base.revision or base.tree}; head {head.tree.resolve()}; per test: {len(outcomes)} test(s), "
                 "the median call of each side's sessions, head ÷ base with a 95 % interval over the worker pairs",
                 ""]
    else:
        lines = []
    lines += markdown_table([_row(o) for o in outcomes]).splitlines() if outcomes else ["no benchmark test ran"]
    lines += [f"- not gated: {o.node}: {o.unpaired.value}" + (f" ({o.detail})" if o.detail else "")
              for o in outcomes if o.unpaired is not None]
    lines += [f"- not gated: {node}: {Unpaired.GONE_FROM_HEAD.value}" for node in gone]
    lines += [f"- not gated: {node}: marked optcv_not_ab" + (f" ({why})" if why else "")
              for node, why in (left_out or {}).items()]
    lines += [f"- note: {o.node}: its fixtures differ between the sides (base {', '.join(o.fixtures_differ[0])}; "
              f"head {', '.join(o.fixtures_differ[1])}); it was gated as each side defines it"
              for o in outcomes if o.fixtures_differ]
    split = [o.node for o in outcomes if o.finding is not None and o.finding.pairs_disagree]
    if split:
        lines.append(f"- WARNING in {len(split)} of {len(outcomes)} test(s) the worker pairs disagree beyond their "
                     f"rounds' noise (a per-process offset; the interval carries it): {', '.join(split[:3])}")
    return lines
