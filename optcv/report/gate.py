"""The A/B gate's summary, its failure lines, its self-test table and the ratio fallback's summary."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from optcv.gate.attribution import OUTSIDE, OperatorChange, named_changes
from optcv.gate.ratio import DEFAULT_MARGIN, RatioFallback
from optcv.gate.run import GateOutcome, SameCode
from optcv.gate.selftest import EXPECTED_OPERATOR, SelfTestResult, UnchangedCoverage
from optcv.gate.verdict import MEASURE_DEFAULTS_PCT, GateResult, MeasureFinding, Verdict
from optcv.report.tables import markdown_table, signed_pct

MEASURE_WORDS = {  # per measure: the failure's name, the value's unit, and the verdicts in its words
    "memory": ("MEMORY REGRESSION", "peak MiB", {Verdict.SLOWER_WITHIN_THRESHOLD: "larger, within threshold",
                                                Verdict.FASTER: "smaller"}),
    "instructions": ("INSTRUCTION REGRESSION", "M instructions/call",
                     {Verdict.SLOWER_WITHIN_THRESHOLD: "more, within threshold", Verdict.FASTER: "fewer"}),
}


# A page per call more than the base's: below it, the heap's last steps of growth after a two-call warm-up.
LEAK_NOTED_KIB_PER_CALL = 4.0


def gate_failure_lines(result: Any) -> list[str]:
    """One line per failing case and measure, for a CI log, with where the change was named."""
    lines = [f"SPEED REGRESSION: {f.case} {signed_pct(f.change_pct)} (95 % CI {signed_pct(f.ci_low_pct)} … "
             f"{signed_pct(f.ci_high_pct)}; base {f.base_median_us:,.1f} µs → head {f.head_median_us:,.1f} µs per "
             f"call; threshold {f.threshold_pct:g} %){named_text(f.profile)}" for f in result.regressions]
    for f in (m for m in getattr(result, "measured", []) if m.failed):
        name, unit, _ = MEASURE_WORDS[f.measure]
        lines.append(f"{name}: {f.case} {signed_pct(f.change_pct)} (every repeat's range {signed_pct(f.ci_low_pct)} "
                     f"… {signed_pct(f.ci_high_pct)}; base {_value(f, f.base_median)} → head {_value(f, f.head_median)}"
                     f" {unit}; threshold {f.threshold_pct:g} %){_functions_text(f)}")
    return lines


def _value(finding: MeasureFinding, value: float) -> str:
    return f"{value / 1024:,.1f}" if finding.measure == "memory" else f"{value / 1e6:,.3f}"


def _functions_text(finding: MeasureFinding) -> str:
    functions = finding.detail.get("functions", [])[:3]
    return ("; where: " + ", ".join(f"{f['function']} {f['change_per_call']:+,.0f}" for f in functions)
            if functions else "")


def measure_rows(result: Any, measure: str) -> list[dict[str, Any]]:
    _, unit, words = MEASURE_WORDS[measure]
    return [{"case": f.case, f"base {unit}": _value(f, f.base_median), f"head {unit}": _value(f, f.head_median),
             "change": signed_pct(f.change_pct), "range of head ÷ base": f"{signed_pct(f.ci_low_pct)} … "
                                                                       f"{signed_pct(f.ci_high_pct)}",
             "threshold": f"{f.threshold_pct:g} %", "repeats": f"{len(f.base)} + {len(f.head)}",
             "verdict": ("**" + f.verdict.value.upper() + "**") if f.failed else words.get(f.verdict, f.verdict.value),
             **_allocation_columns(f)}
            for f in result.measured if f.measure == measure]


def _allocation_columns(finding: MeasureFinding) -> dict[str, str]:
    """What each call asked of malloc, base → head (memory findings that carry it)."""
    d = finding.detail
    if "base_allocated_bytes_per_call" not in d:
        return {}
    return {"malloc KiB/call": f"{d['base_allocated_bytes_per_call'] / 1024:,.1f} → "
                               f"{d['head_allocated_bytes_per_call'] / 1024:,.1f}",
            "blocks/call": f"{d['base_allocated_blocks_per_call']:,.0f} → {d['head_allocated_blocks_per_call']:,.0f}"}


def measured_markdown(result: Any) -> list[str]:
    """The memory and instruction sections of a gate's summary."""
    lines: list[str] = []
    if any(f.measure == "memory" for f in result.measured):
        lines += ["", "### Memory: each case's peak resident memory", "",
                  "In a child forked per measurement from a worker that has imported the runtimes: the peak it "
                  "reached over the case's set-up and calls, less what it held at its start; and what each call "
                  "asked of malloc (bytes and blocks, the median over repeats; a runtime's own mmap is not in it).",
                  "",
                  markdown_table(measure_rows(result, "memory"))]
        leaks = [f for f in result.measured if f.measure == "memory"
                 and f.detail.get("head_retained_kib_per_call", 0)
                 - f.detail.get("base_retained_kib_per_call", 0) >= LEAK_NOTED_KIB_PER_CALL]
        lines += [f"- {f.case}: the head kept {f.detail['head_retained_kib_per_call']:,.0f} KiB resident per call "
                  f"after its warm-up, the base {f.detail['base_retained_kib_per_call']:,.0f}" for f in leaks]
    found = [f for f in result.measured if f.measure == "instructions"]
    if found:
        capability = found[0].detail.get("cpu_capability", {})
        lines += ["", "### Instructions per call (valgrind callgrind, one-thread cases)", "",
                  "Counted on valgrind's simulated CPU, whatever the machine's load; it runs the kernels that CPU "
                  f"selects (PyTorch's CPU capability under valgrind: {', '.join(map(str, set(capability.values())))}"
                  "), and sees no threading or memory-bandwidth effect.", "", markdown_table(measure_rows(result,
                                                                                                    "instructions"))]
        for f in found:
            if f.failed and f.detail.get("functions"):
                lines += ["", f"Functions whose instructions per call changed most: {f.case}", "",
                          markdown_table([{"function": r["function"][:90], "base": f"{r['base_per_call']:,.0f}",
                                           "head": f"{r['head_per_call']:,.0f}",
                                           "change": f"{r['change_per_call']:+,.0f}"} for r in f.detail["functions"]])]
    return lines


def named_text(profile: dict[str, Any] | None) -> str:
    if not profile:
        return ""
    named = named_changes(profile)
    return "; where: " + (", ".join(f"{c.operator} {c.change_us:+.1f} µs" for c in named) or "no change named")


def gate_rows(result: Any) -> list[dict[str, Any]]:
    return [{"case": f.case, "base median µs": f.base_median_us, "head median µs": f.head_median_us,
             "change": signed_pct(f.change_pct), "95% CI": f"{signed_pct(f.ci_low_pct)} … {signed_pct(f.ci_high_pct)}",
             "resolution": f"±{f.half_width_pct:.1f} %", "threshold": f"{f.threshold_pct:g} %",
             "pairs × rounds × calls": f"{len(f.pair_changes_pct)} × {f.rounds} × {f.calls_per_turn}",
             "verdict": ("**" + f.verdict.value.upper() + "**") if f.failed else f.verdict.value}
            for f in result.findings]


def disagreement_lines(result: Any, named: int = 3) -> list[str]:
    """One warning when the gate's own worker pairs disagree beyond their rounds' noise in some cases (naming the
    widest), and one per case whose resolution is coarser than its threshold (it could pass a slowdown of its
    threshold's size however significant)."""
    split = sorted((f for f in result.findings if f.pairs_disagree),
                   key=lambda f: -f.pair_spread_pct / max(f.round_noise_pct, 1e-9))
    lines = []
    if split:
        widest = "; ".join(f"{f.case} pairs {', '.join(signed_pct(c) for c in f.pair_changes_pct)} (spread "
                           f"{f.pair_spread_pct:.1f} % against {f.round_noise_pct:.1f} % from the rounds)"
                           for f in split[:named])
        lines.append(f"- WARNING in {len(split)} of {len(result.findings)} cases the worker pairs disagree beyond "
                     f"their rounds' noise, an offset of the processes rather than the code, which the intervals "
                     f"carry (more workers, --workers, narrow them): {widest}")
    lines += [f"- WARNING {f.case}: resolution ±{f.half_width_pct:.1f} % is coarser than its {f.threshold_pct:g} % "
              "threshold here: a slowdown of that size could pass" for f in result.findings
              if f.half_width_pct > f.threshold_pct]
    return lines


def profile_rows(profile: dict[str, Any], top: int = 8) -> list[dict[str, Any]]:
    """The operators whose change's interval excludes zero (at most `top`), largest first, and always the time
    outside operators; the rest are summed in one row, so the rows add up to the call."""
    changes = [OperatorChange(**c) for c in profile["changes"]]
    named = [c for c in changes if c.significant and c.operator != OUTSIDE][:top]
    outside = next(c for c in changes if c.operator == OUTSIDE)
    rest = [c for c in changes if c not in named and c is not outside]
    rows = [_change_row(c.operator, c) for c in named]
    rows.append({"operator": f"{len(rest)} other operators (no change named)",
                 "base µs/call": sum(c.base_us for c in rest), "head µs/call": sum(c.head_us for c in rest),
                 "change µs (95% CI)": f"{sum(c.change_us for c in rest):+.1f}", "named": ""})
    rows.append(_change_row("time outside operators (Python, optcv's path)", outside))
    return rows


def _pace_text(profile: dict[str, Any]) -> str:
    paces = profile.get("head_paces")
    if not paces:
        return ""
    return (f"Each head profile is brought to its base's pace (the median head ÷ base of its larger rows: "
            f"{min(paces):.2f} … {max(paces):.2f}), so a slowdown of every operator alike is not named here.")


def _change_row(label: str, change: OperatorChange) -> dict[str, Any]:
    return {"operator": label, "base µs/call": change.base_us, "head µs/call": change.head_us,
            "change µs (95% CI)": f"{change.change_us:+.1f} ({change.ci_low_us:+.1f} … {change.ci_high_us:+.1f})",
            "named": "yes" if change.significant else ""}


def _side_line(side: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in side["versions"].items())
    where = side["revision"] or f"working tree {side['tree']}"
    return f"{where}; {side['python']}; {versions}; code {side['code_hash']}"


def _change_text(finding: Any) -> str:
    return f"{signed_pct(finding.change_pct)} ({signed_pct(finding.ci_low_pct)} … {signed_pct(finding.ci_high_pct)})"


def _headline(result: Any) -> str:
    """Passed, or what failed, with the cases each measure judged."""
    failed = result.regressions
    head = (f"## optcv gate: {len(failed)} of {len(result.findings)} cases slower beyond their threshold"
            if failed else f"## optcv gate: passed ({len(result.findings)} cases, none slower beyond its threshold)")
    measures = sorted({f.measure for f in result.measured})
    if not result.findings and measures:
        head = "## optcv gate: passed" if not any(f.failed for f in result.measured) else "## optcv gate: FAILED"
    for measure in measures:
        judged = [f for f in result.measured if f.measure == measure]
        beyond = sum(f.failed for f in judged)
        head += (f"; {measure}: {beyond} of {len(judged)} cases beyond their threshold" if beyond
                 else f"; {measure}: {len(judged)} cases, none beyond its threshold")
    unpaired = getattr(result, "not_compared", [])
    if unpaired:
        head += f"; {len(unpaired)} case(s) NOT COMPARED (below)"
    return head


def gate_markdown(result: Any) -> str:
    env = result.environment
    failed = result.regressions
    lines = [_headline(result), "",
             f"- base: {_side_line(result.base)}", f"- head: {_side_line(result.head)}",
             f"- machine: {env['cpu']} ({env['cpu_count']} cores), load {env.get('load_average_1m')}; "
             f"{result.protocol['workers_per_side']} workers per side, seed {result.protocol['seed']}; "
             f"{result.seconds:.0f} s"]
    if result.findings:
        lines += [f"- change = head ÷ base per call − 1: {result.protocol['statistic']}; a case fails when the "
                  "interval excludes 0 and the change exceeds its threshold; faster is never a failure; resolution: "
                  "the interval's half-width", "", markdown_table(gate_rows(result))]
        lines += [""] * bool(disagreement_lines(result)) + disagreement_lines(result)
    for finding in failed:
        if finding.profile:
            lines += ["", f"### Where the time went: {finding.case}", "",
                      f"{finding.profile['repeats']} profiles of {finding.profile['calls_per_profile']} calls per "
                      "side, interleaved; a change is named where its interval excludes zero. "
                      + _pace_text(finding.profile), "",
                      markdown_table(profile_rows(finding.profile), digits=1)]
    if result.retested:
        final = {f.case: f for f in result.findings}
        lines += ["", "Re-tested with fresh workers (the set-up order mirrored): a failing case, or an undecided one "
                  "(slower than its threshold, but not significantly), is judged on the worker pairs of both "
                  "passes:", "",
                  markdown_table([{"case": f.case, "first pass": _change_text(f),
                                   "decided on": "both passes" if final[f.case].passes > 1 else "the re-test",
                                   "change": _change_text(final[f.case]), "verdict": final[f.case].verdict.value}
                                  for f in result.retested])]
    lines += measured_markdown(result)
    lines += [f"- NOT COMPARED {case}: {why}" for case, why in getattr(result, "not_compared", [])]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def self_test_rows(result: SelfTestResult, threshold: float, measure: str = "time") -> list[dict[str, Any]]:
    rows = []
    for arm in result.arms(threshold, measure):
        should_fail = arm.nominal_pct >= threshold
        rows.append({"injected": arm.injection, "case": arm.case, "nominal": f"+{arm.nominal_pct:g} %",
                     "measured (median, range)": f"{signed_pct(arm.median_measured_pct)} "
                                                 f"({min(arm.measured_pct):+.1f} … {max(arm.measured_pct):+.1f})",
                     "should": "fail" if should_fail else "pass",
                     "did": f"failed {arm.failed}/{arm.runs}" if should_fail
                     else f"passed {arm.runs - arm.failed}/{arm.runs}"})
    return rows


def self_test_markdown(result: SelfTestResult) -> str:
    wrapped = ", ".join(result.config.get("wrapped_on_both_sides", [])) or "nothing"
    lines = ["## optcv gate self-test", "",
             "Injected from a sitecustomize.py on the head's PYTHONPATH: a busy-wait of the given fraction of each "
             "timed call (time), extra arithmetic of that fraction of the case's instructions (work), a retained "
             "buffer of that fraction of the case's resident memory (memory); the base's wraps the same entry points "
             f"({wrapped}) and adds nothing. "
             f"Measured: the gate's change for the case (its last word, after any re-test). Machine: "
             f"{result.environment['cpu']} ({result.environment['cpu_count']} cores).", ""]
    for threshold in result.thresholds if "time" in result.measures() else ():
        rows = self_test_rows(result, threshold)
        runs_failed, runs, cases_failed, n_cases = result.false_alarms(threshold)
        lines += [f"### threshold {threshold:g} %", "", markdown_table(rows) if rows else "(no injected runs)", "",
                  f"False alarms: {runs_failed} of {runs} gate runs on unchanged code failed; "
                  f"{cases_failed} of {n_cases} case measurements with nothing injected (all runs) failed.", ""]
    coverage = result.coverage() if "time" in result.measures() else []
    if coverage:
        lines += ["### Unchanged code: how often each case's 95 % interval held zero", "",
                  "Every run that injected nothing into the case; a 95 % interval should miss about 1 time in 20, "
                  "as often on either side.", "", coverage_table(coverage), ""]
    for measure in (m for m in result.measures() if m != "time"):
        threshold = MEASURE_DEFAULTS_PCT[measure]
        rows = self_test_rows(result, threshold, measure)
        runs_failed, runs, cases_failed, n_cases = result.false_alarms(threshold, measure)
        table = markdown_table(rows) if rows else "(no injected runs)"
        lines += [f"### {measure}, threshold {threshold:g} %", "", table,
                  "", f"False alarms: {runs_failed} of {runs} gate runs on unchanged code failed on {measure}; "
                  f"{cases_failed} of {n_cases} case measurements with nothing injected (all runs) failed.", ""]
    attribution = result.attribution()
    if attribution:
        lines += ["### Where the time went, checked", "",
                  markdown_table([{"injected": target, "should be named": EXPECTED_OPERATOR.get(target, OUTSIDE),
                                   "named first": f"{right}/{n} failing cases"}
                                  for target, (right, n) in sorted(attribution.items())]), ""]
    return "\n".join(lines)


def ratio_fallback_markdown(fallback: RatioFallback) -> str:
    lines = ["## optcv gate: RATIO FALLBACK (no base revision to time against; --allow-no-base)", "",
             f"- why: {fallback.reason}",
             f"- gated instead: PyTorch ÷ ONNX Runtime speed-ups measured interleaved in this run against "
             f"this machine's entry in {fallback.baseline}; a speed-up fails when even its interval's upper end "
             f"is more than {100 * DEFAULT_MARGIN:g} % below the baseline's. This sees a slower ONNX Runtime, "
             "not a slower PyTorch or shared path."]
    if fallback.software_differences:
        lines.append("- recorded on this machine with other software: " + "; ".join(fallback.software_differences))
    lines += ["", "\n".join(f"- {f.message()}" for f in fallback.findings)]
    return "\n".join(lines) + "\n"


def same_code_markdown(same: SameCode) -> str:
    what = ("the same files their declared models are made of" if same.user_models
            else "the same optcv code that the cases run")
    return (f"## optcv gate: nothing to time (base and head hold {what})\n\n"
            f"- base: {same.base}\n- head: {same.head}\n- code hash: {same.code_hash} on both sides, same "
            "interpreter; `optcv gate --even-if-unchanged` times them anyway\n")


def outcome_markdown(outcome: GateOutcome) -> str:
    """The summary of whatever the gate did: the A/B table, the ratio fallback, or why nothing was timed."""
    if isinstance(outcome, GateResult):
        return gate_markdown(outcome)
    if isinstance(outcome, RatioFallback):
        return ratio_fallback_markdown(outcome)
    return same_code_markdown(outcome)


def outcome_failure_lines(outcome: GateOutcome) -> list[str]:
    """One line per failing case, for a CI log."""
    if isinstance(outcome, GateResult):
        return gate_failure_lines(outcome)
    return [f.message() for f in outcome.regressions]


def coverage_table(coverage: Sequence[UnchangedCoverage]) -> str:
    """Per case, how often its interval held zero on unchanged code, with the misses on each side."""
    rows = [{"case": c.case, "runs": c.runs, "held zero": f"{c.contain}/{c.runs}",
             "wholly below (read faster)": c.below, "wholly above (read slower)": c.above,
             "median change": signed_pct(c.median_change_pct)}
            for c in coverage]
    runs = sum(c.runs for c in coverage)
    if len(coverage) > 1 and runs:
        rows.append({"case": "all", "runs": runs, "held zero": f"{sum(c.contain for c in coverage)}/{runs} "
                     f"({100 * sum(c.contain for c in coverage) / runs:.1f} %)",
                     "wholly below (read faster)": sum(c.below for c in coverage),
                     "wholly above (read slower)": sum(c.above for c in coverage),
                     "median change": signed_pct(statistics.median(c.median_change_pct for c in coverage))})
    return markdown_table(rows)
