"""The gate proves itself: real slowdowns injected from outside, and unchanged code, through the whole A/B gate.

Both sides are this source tree and interpreter. Each side's workers get a `sitecustomize.py` (optcv.gate.inject)
that wraps the same entry points in the same order; the base's wrappers wait for nothing, the head's slow their
targets by the given fractions, so the wrapper's own cost is on both sides and the measured change is the
injected one. A run may slow one target at the boundary and another just below the threshold, so one gate
run checks both a catch and a pass. Each run is a complete gate (fresh workers, its own seed), so detection
and false-alarm rates are those of the gate as CI runs it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optcv._io import read_json_object, work_folder, write_json
from optcv.data import default_cache_dir
from optcv.env import environment_info
from optcv.errors import OptcvError
from optcv.gate.attribution import OUTSIDE, named_changes
from optcv.gate.compare import Log, gate_cases, measure, prepare_inputs
from optcv.gate.config import GateConfig, build_recipes, recipes_for
from optcv.gate.inject import TARGETS, TOUCHES, write_injection
from optcv.gate.sides import HEAD_TREE, Side
from optcv.gate.verdict import (
    DEFAULT_THRESHOLD_PCT,
    CaseFinding,
    MeasureFinding,
    PairedChange,
    Thresholds,
    Verdict,
    verdict_of,
)
from optcv.gate.worker.protocol import CaseSpec, Recipe, Setup
from optcv.gate.workers import build_artifacts

SELF_TEST_SCHEMA = "optcv-gate-self-test/2"
LEVELS_PCT = (1.5, 5.0, 10.0)  # injected slowdowns: below the default threshold, at the boundary, well above
REPEATS = 10  # gate runs per target and level
UNCHANGED_REPEATS = 20  # gate runs of unchanged code
THRESHOLDS_PCT = (DEFAULT_THRESHOLD_PCT, 2.0)  # each run judged at each

Injection = Mapping[str, float]  # target -> slowdown in %; empty: unchanged code
# Where the per-operator comparison must put each injected slowdown: a wait is outside every operator.
EXPECTED_OPERATOR = {"pytorch-op": "aten::exp"}


# Which injected targets each measure should see: a wait is time, extra arithmetic is instructions (and some
# time), a retained buffer is memory.
MEASURE_TARGETS = {"time": frozenset({"onnxruntime", "openvino", "pytorch", "pytorch-op", "shared"}),
                   "instructions": frozenset({"work"}), "memory": frozenset({"memory"})}


def affected(target: str, case: str) -> bool:
    """Whether an injection into `target` (optcv.gate.inject) reaches `case`."""
    return case.split("/")[1] in TOUCHES[target]


def nominal_pct(injected: Injection, case: str, measure: str = "time") -> float:
    """The change injected into `case` for `measure`: the sum of the levels of its targets that the case goes
    through."""
    return sum(pct for target, pct in injected.items() if target in MEASURE_TARGETS[measure] and affected(target, case))


def touched(injected: Injection, case: str) -> bool:
    return any(pct and affected(target, case) for target, pct in injected.items())


def injection_label(injected: Injection) -> str:
    active = {t: pct for t, pct in injected.items() if pct}
    return ", ".join(f"{t} +{pct:g} %" for t, pct in sorted(active.items())) or "unchanged"


@dataclass
class SelfTestRun:
    injected: dict[str, float]  # target -> %; empty or all zero: unchanged code
    seed: int
    findings: list[CaseFinding]  # the gate's last word per case (the re-test's where there was one)
    seconds: float
    first_pass: dict[str, CaseFinding] = field(default_factory=dict)  # of the re-tested cases
    measured: list[MeasureFinding] = field(default_factory=list)  # memory and instructions, where measured

    def outcomes(self, measure: str, threshold_pct: float) -> list[tuple[str, float, bool]]:
        """Per case of `measure`: (case, measured change %, whether a gate at `threshold_pct` fails it)."""
        if measure == "time":
            return [(f.case, f.change_pct, self.verdict(f, threshold_pct) is Verdict.REGRESSION) for f in self.findings]
        return [(f.case, f.change_pct, _verdict(f, threshold_pct) is Verdict.REGRESSION)
                for f in self.measured if f.measure == measure]

    @property
    def unchanged(self) -> bool:
        return not any(self.injected.values())

    def verdict(self, finding: CaseFinding, threshold_pct: float) -> Verdict:
        """What a gate at `threshold_pct` would have said. The re-tests ran at the lowest threshold judged, so
        every case that a gate at `threshold_pct` re-tests (it fails or is undecided there) was re-tested, and is
        judged on both passes together. (A record whose failures were judged on their re-test alone has
        `passes` 1 for them.)"""
        first_pass = self.first_pass.get(finding.case, finding)
        first = _verdict(first_pass, threshold_pct)
        retested = first is Verdict.REGRESSION or (finding.passes > 1 and first_pass.undecided_at(threshold_pct))
        return _verdict(finding, threshold_pct) if retested else first


@dataclass(frozen=True)
class ArmResult:
    """One case under one injection, over every run of it: how often the gate failed it, and what it measured."""

    injection: str
    case: str
    nominal_pct: float
    failed: int
    runs: int
    measured_pct: tuple[float, ...]

    @property
    def median_measured_pct(self) -> float:
        return statistics.median(self.measured_pct)


@dataclass(frozen=True)
class UnchangedCoverage:
    """One case over every run that injected nothing into it: how often its 95 % interval held zero."""

    case: str
    runs: int
    contain: int  # intervals that contain zero
    below: int  # intervals wholly below zero: read faster
    above: int  # wholly above: read slower
    median_change_pct: float

    @property
    def coverage(self) -> float:
        return self.contain / self.runs


@dataclass
class SelfTestResult:
    runs: list[SelfTestRun]
    thresholds: tuple[float, ...]
    config: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def measures(self) -> list[str]:
        timed = ["time"] if any(run.findings for run in self.runs) else []
        return [*timed, *sorted({f.measure for run in self.runs for f in run.measured})]

    def arms(self, threshold_pct: float, measure: str = "time") -> list[ArmResult]:
        """Per injection and injected case (nominal change > 0 for `measure`), in the order first run. A case that
        another measure's injection also reaches is left out of this measure's arms."""
        grouped: dict[tuple[str, str], list[tuple[float, bool, float]]] = {}
        for run in self.runs:
            for case, change, failed in run.outcomes(measure, threshold_pct):
                nominal = nominal_pct(run.injected, case, measure)
                others = any(pct and affected(t, case) and t not in MEASURE_TARGETS[measure]
                             for t, pct in run.injected.items())
                if nominal and not others:
                    grouped.setdefault((injection_label(run.injected), case), []).append((nominal, failed, change))
        return [ArmResult(label, case, seen[0][0], sum(x[1] for x in seen), len(seen), tuple(x[2] for x in seen))
                for (label, case), seen in grouped.items()]

    def arm(self, injection: Injection, case: str, threshold_pct: float) -> ArmResult:
        label = injection_label(injection)
        found = [a for a in self.arms(threshold_pct) if a.injection == label and a.case == case]
        if not found:
            raise KeyError(f"no self-test run injected {label} into {case}")
        return found[0]

    def attribution(self) -> dict[str, tuple[int, int]]:
        """Per injected target, over the failing cases it alone slowed that were profiled: (cases whose largest
        named change is where the slowdown was put, such cases). An extra operator must be named as that
        operator, a wait as time outside operators."""
        out: dict[str, tuple[int, int]] = {}
        for run in self.runs:
            active = [t for t, pct in run.injected.items() if pct]
            for f in run.findings:
                hit = [t for t in active if affected(t, f.case)]
                if len(hit) != 1 or not f.failed or not f.profile:
                    continue
                named = named_changes(f.profile)
                right = bool(named) and named[0].operator == EXPECTED_OPERATOR.get(hit[0], OUTSIDE)
                found, n = out.get(hit[0], (0, 0))
                out[hit[0]] = (found + right, n + 1)
        return out

    def coverage(self) -> list[UnchangedCoverage]:
        """Per case, its time intervals in the runs that injected nothing into it (the unchanged arm, and the
        untouched cases of the other runs): a 95 % interval should contain zero 95 % of the time, and miss as often
        on either side."""
        seen: dict[str, list[CaseFinding]] = {}
        for run in self.runs:
            for finding in run.findings:
                if not touched(run.injected, finding.case):
                    seen.setdefault(finding.case, []).append(finding)
        return [UnchangedCoverage(case, len(found), sum(f.ci_low_pct <= 0 <= f.ci_high_pct for f in found),
                                  sum(f.ci_high_pct < 0 for f in found), sum(f.ci_low_pct > 0 for f in found),
                                  statistics.median(f.change_pct for f in found))
                for case, found in seen.items()]

    def false_alarms(self, threshold_pct: float, measure: str = "time") -> tuple[int, int, int, int]:
        """(unchanged gate runs that failed on `measure`, unchanged runs, cases with nothing injected that failed in
        any run, such cases)."""
        failed_runs = runs = failed_cases = cases = 0
        for run in self.runs:
            untouched = [o for o in run.outcomes(measure, threshold_pct) if not touched(run.injected, o[0])]
            flagged = [o for o in untouched if o[2]]
            failed_cases, cases = failed_cases + len(flagged), cases + len(untouched)
            if run.unchanged:
                runs += 1
                failed_runs += bool(flagged)
        return failed_runs, runs, failed_cases, cases

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SELF_TEST_SCHEMA, "config": self.config, "environment": self.environment,
                "thresholds": list(self.thresholds), "notes": self.notes,
                "runs": [run_to_dict(r) for r in self.runs]}


def run_to_dict(run: SelfTestRun) -> dict[str, Any]:
    return {"injected_pct": run.injected, "seed": run.seed, "seconds": run.seconds,
            "findings": [_finding_to_dict(f) for f in run.findings],
            "first_pass_of_retested": [_finding_to_dict(f) for f in run.first_pass.values()],
            "measured": [_finding_to_dict(f) for f in run.measured]}


def _finding_to_dict(finding: CaseFinding | MeasureFinding) -> dict[str, Any]:
    return {**asdict(finding), "verdict": finding.verdict.value}


def _finding_from_dict(data: dict[str, Any]) -> CaseFinding:
    return CaseFinding(**{**data, "verdict": Verdict(data["verdict"]),
                          "pair_changes_pct": tuple(data.get("pair_changes_pct", ()))})


def _measured_from_dict(data: dict[str, Any]) -> MeasureFinding:
    return MeasureFinding(**{**data, "verdict": Verdict(data["verdict"]), "base": tuple(data["base"]),
                             "head": tuple(data["head"])})


def run_from_dict(data: dict[str, Any]) -> SelfTestRun:
    first = [_finding_from_dict(f) for f in data.get("first_pass_of_retested", [])]
    return SelfTestRun(dict(data["injected_pct"]), int(data["seed"]), [_finding_from_dict(f) for f in data["findings"]],
                       float(data["seconds"]), {f.case: f for f in first},
                       [_measured_from_dict(f) for f in data.get("measured", [])])


def resumable_runs(record: Path, config: dict[str, Any], plan: Sequence[Injection]) -> list[SelfTestRun]:
    """The runs a self-test record holds when it was made with the same settings and its runs follow `plan`;
    none when there is no record. A record of other settings is refused rather than overwritten."""
    if not record.is_file():
        return []
    data = read_json_object(record, "self-test record", "delete it to start again")
    runs = [run_from_dict(r) for r in data.get("runs", [])]
    same = (data.get("schema") == SELF_TEST_SCHEMA and data.get("config") == json.loads(json.dumps(config))
            and len(runs) <= len(plan) and all(r.injected == dict(p) for r, p in zip(runs, plan, strict=False)))
    if not same:
        raise OptcvError(f"{record} records a self-test of other settings or another plan; give another --json path, "
                         "or delete it to start again")
    return runs


def default_plan(targets: Sequence[str] = TARGETS, levels_pct: Sequence[float] = LEVELS_PCT,
                 repeats: int = REPEATS, unchanged_repeats: int = UNCHANGED_REPEATS) -> list[dict[str, float]]:
    """`repeats` runs of each target at each level and `unchanged_repeats` runs of unchanged code spread evenly
    among them, so that a slow hour of the machine falls on both. Targets that slow disjoint sets of cases share
    runs, each at another level in each run (a Latin square), so that one run checks a catch in some cases and a
    pass in others, at no cost to either."""
    injected = [{t: levels_pct[(i + j) % len(levels_pct)] for j, t in enumerate(group)}
                for group in disjoint_groups(targets) for i in range(len(levels_pct) * repeats)]
    total = len(injected) + unchanged_repeats
    unchanged_at = {round(k * total / unchanged_repeats) for k in range(unchanged_repeats)}
    runs = iter(injected)
    return [{} if i in unchanged_at else next(runs) for i in range(total)]


def disjoint_groups(targets: Sequence[str]) -> list[list[str]]:
    """`targets` in groups, in order, such that no two of a group slow the same case."""
    groups: list[list[str]] = []
    for target in targets:
        group = next((g for g in groups if all(not TOUCHES[target] & TOUCHES[t] for t in g)), None)
        if group is None:
            groups.append([target])
        else:
            group.append(target)
    return groups


def _verdict(finding: CaseFinding | MeasureFinding, threshold_pct: float) -> Verdict:
    return verdict_of(PairedChange(finding.change_pct, finding.ci_low_pct, finding.ci_high_pct, 0), threshold_pct)


# The loop iterations per call the sizing adds on its second count: ~7 % of TutorialNet's PyTorch call, far more
# than the count's own spread under one hash seed, so the difference is the loop's cost.
SIZING_ITERATIONS = 100


def _work_sizer(workdir: Path, wrapped: Sequence[str], specs: Sequence[CaseSpec], setup: Setup,
                log: Log) -> Callable[[float], dict[str, float]]:
    """The `work` target's mean loop iterations per call, per case, for a level in %: the level's share of the
    case's instructions per call over what one iteration adds to that call. Both are counted in the worker, on the
    base's wrappers, by two valgrind processes at once with the same hash seed and padding, one with no extra work
    and one with SIZING_ITERATIONS a call. (Counted in a bare interpreter, an iteration cost 849–865 instructions,
    more than in the worker: 1 % injected read +0.62 … +0.94 % on PyTorch's call and +0.7 % once on ONNX
    Runtime's; and whole iterations per call rounded 0.25 % of ONNX Runtime's call to 0.15 or 0.30 %.)"""
    from optcv.gate.instructions import client_library, collect_count, counted, start_count

    library, chosen = client_library(), counted(specs)
    started = []
    for tag, iterations in (("sizing-a", 0), ("sizing-b", SIZING_ITERATIONS)):
        injection = write_injection(workdir / f"inject-{tag}", dict.fromkeys(wrapped, 0.0),
                                    dict.fromkeys((s.id for s in chosen), float(iterations)))
        started.append(start_count(Side("base", sys.executable, HEAD_TREE, extra_path=(injection,)), chosen, setup,
                                   workdir, tag, library, 0))
    bare, loaded = (collect_count(s)["counts"] for s in started)
    per_iteration = {case: (loaded[case]["per_call"] - c["per_call"]) / SIZING_ITERATIONS for case, c in bare.items()}
    log("self-test: extra work sized in the worker; one loop iteration adds " + ", ".join(
        f"{case} {cost:.1f}" for case, cost in per_iteration.items()) + " instructions per call")
    return lambda pct: {case: pct / 100 * c["per_call"] / per_iteration[case] for case, c in bare.items()}


def _recipes(specs: Sequence[CaseSpec]) -> dict[str, Recipe]:
    """The cases' recipes, each reference model's with its int8 twin as a default gate builds it, so that a
    self-test run after a gate (the pull-request tier) finds that gate's builds in the cache."""
    reference = list(dict.fromkeys(s.model for s in specs if not s.declared))
    return {**recipes_for(specs), **build_recipes(reference, reference)}


def run_self_test(config: GateConfig = GateConfig(), plan: Sequence[Injection] | None = None, *,
                  thresholds: Sequence[float] = THRESHOLDS_PCT, attribution: bool = False,
                  data_dir: str | Path | None = None, log: Log = lambda _m: None,
                  progress: bool = False, record: str | Path | None = None) -> SelfTestResult:
    """One complete gate per entry of `plan` (default: `default_plan()`), judged at each threshold; with
    `attribution`, failing cases are profiled as a gate profiles them, to check where the time is put. With
    `record`, every finished run is written there at once, and a self-test started again with the same settings
    goes on after the runs it holds."""
    injections = [dict(p) for p in (default_plan() if plan is None else plan)]
    wrapped = sorted({t for injected in injections for t in injected})  # every run wraps these, on both sides
    cases = gate_cases(config, Side("head", sys.executable, HEAD_TREE))  # fails early on a pattern matching none
    # The harness workers build their own models for memory and instructions (and the work target's sizing);
    # time alone runs in the suite's sessions, which build theirs.
    harness = any(m in config.measures for m in ("memory", "instructions")) or not cases.tests
    settings = {**asdict(config), "wrapped_on_both_sides": wrapped, "attribution": attribution,
                "retest_threshold_pct": min(thresholds)}
    runs = resumable_runs(Path(record), settings, injections) if record else []
    if runs:
        log(f"self-test: {len(runs)} of {len(injections)} runs recorded in {record}; going on from run {len(runs) + 1}")
    with work_folder("optcv-selftest-") as workdir:
        inputs, root = prepare_inputs(workdir, data_dir)
        built = build_artifacts(Side("base", sys.executable, HEAD_TREE), workdir, _recipes(cases.specs), root,
                                default_cache_dir()) if harness else None
        work = _work_sizer(workdir, wrapped, cases.specs, Setup(inputs, built), log) \
            if built and any(i.get("work") for i in injections) else None
        for index, injected in enumerate(injections):
            if index < len(runs):
                continue
            # Folders of the same name length on both sides; the same wrappers and work table (the same cases, zero
            # iterations on the base), only the head's wait and work.
            base = Side("base", sys.executable, HEAD_TREE, extra_path=(write_injection(
                workdir / f"inject-b-{index:04d}", dict.fromkeys(wrapped, 0.0), work(0.0) if work else None),))
            head = Side("head", sys.executable, HEAD_TREE, extra_path=(write_injection(
                workdir / f"inject-h-{index:04d}", {t: injected.get(t, 0.0) / 100 for t in wrapped},
                work(injected.get("work", 0.0)) if work else None),))
            profile_ms = config.profile_ms if attribution else 0.0
            run_config = GateConfig(**{**asdict(config), "seed": config.seed + index, "profile_ms": profile_ms})
            result = measure(base, head, run_config, Thresholds(min(thresholds)), data_dir=root,
                             cache_dir=default_cache_dir(), workdir=workdir, log=lambda _m: None,
                             artifacts={"base": built, "head": built} if built else None, cases=cases)
            runs.append(SelfTestRun(injected, run_config.seed, result.findings, result.seconds,
                                    {f.case: f for f in result.retested}, result.measured))
            if record:
                write_json(record, SelfTestResult(runs, tuple(thresholds), settings, environment_info()).to_dict())
            log(f"self-test run {index + 1}/{len(injections)}: {injection_label(injected)}: "
                f"{len(result.failures)} finding(s) failed ({result.seconds:.0f} s)")
    return SelfTestResult(runs, tuple(thresholds), settings, environment_info())
