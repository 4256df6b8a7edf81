"""The gate proves itself: real slowdowns injected from outside, and unchanged code, through the whole A/B gate.

Both sides are this source tree and interpreter. Each side's workers get a `sitecustomize.py` (optcv.gate.inject)
that imports the same modules in the same order; only the head's slows its target by the given fraction.
Each run is a complete gate (fresh workers, its own seed), so the detection and false-alarm rates are those
of the gate as CI runs it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optcv.data import default_cache_dir
from optcv.env import environment_info
from optcv.gate.config import GateConfig, case_specs
from optcv.gate.inject import NONE, TARGETS, write_injection
from optcv.gate.sides import HEAD_TREE, Side
from optcv.gate.timing import Log, measure, prepare_inputs
from optcv.gate.verdict import DEFAULT_THRESHOLD_PCT, CaseFinding, PairedChange, Thresholds, Verdict, verdict_of
from optcv.gate.workers import build_artifacts

SELF_TEST_SCHEMA = "optcv-gate-self-test/1"
LEVELS_PCT = (3.0, 5.0, 10.0)  # injected slowdowns
REPEATS = 10  # gate runs per target and level
UNCHANGED_REPEATS = 20  # gate runs of unchanged code
THRESHOLDS_PCT = (DEFAULT_THRESHOLD_PCT, 2.0)  # each run judged at each


def affected(target: str | None, case: str) -> bool:
    """Whether an injection into `target` slows `case` down (None: nothing injected)."""
    if target is None:
        return False
    if target == "shared":
        return True
    if target == "onnxruntime":
        return "/onnxruntime/" in case
    return "/pytorch/" in case or "/train/" in case


@dataclass
class SelfTestRun:
    target: str | None  # None: unchanged code
    level_pct: float
    seed: int
    findings: list[CaseFinding]  # the gate's last word per case (the re-test's where there was one)
    seconds: float
    first_pass: dict[str, CaseFinding] = field(default_factory=dict)  # of the re-tested cases

    def verdict(self, finding: CaseFinding, threshold_pct: float) -> Verdict:
        """What a gate at `threshold_pct` would have said: a first-pass failure stands only if its re-test
        (run at the lowest threshold judged, so every case that could fail was re-tested) fails too."""
        first = _verdict(self.first_pass.get(finding.case, finding), threshold_pct)
        return _verdict(finding, threshold_pct) if first is Verdict.REGRESSION else first


@dataclass
class SelfTestResult:
    runs: list[SelfTestRun]
    thresholds: tuple[float, ...]
    config: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def detections(self, target: str, level_pct: float, threshold_pct: float) -> dict[str, tuple[int, int]]:
        """Per affected case: (runs that failed it, runs), judged at `threshold_pct`."""
        out: dict[str, tuple[int, int]] = {}
        for run in self.runs:
            if run.target != target or run.level_pct != level_pct:
                continue
            for f in run.findings:
                if affected(target, f.case):
                    caught, n = out.get(f.case, (0, 0))
                    out[f.case] = (caught + (run.verdict(f, threshold_pct) is Verdict.REGRESSION), n + 1)
        return out

    def false_alarms(self, threshold_pct: float) -> tuple[int, int, int, int]:
        """(unchanged gate runs that failed, unchanged runs, unaffected cases failed in any run, such cases)."""
        failed_runs = runs = failed_cases = cases = 0
        for run in self.runs:
            unaffected = [f for f in run.findings if not affected(run.target, f.case)]
            flagged = [f for f in unaffected if run.verdict(f, threshold_pct) is Verdict.REGRESSION]
            failed_cases, cases = failed_cases + len(flagged), cases + len(unaffected)
            if run.target is None:
                runs += 1
                failed_runs += bool(flagged)
        return failed_runs, runs, failed_cases, cases

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SELF_TEST_SCHEMA, "config": self.config, "environment": self.environment,
                "thresholds": list(self.thresholds), "notes": self.notes,
                "runs": [{"target": r.target, "level_pct": r.level_pct, "seed": r.seed, "seconds": r.seconds,
                          "findings": [{**asdict(f), "verdict": f.verdict.value} for f in r.findings],
                          "first_pass_of_retested": [asdict(f) for f in r.first_pass.values()]}
                         for r in self.runs]}


def _verdict(finding: CaseFinding, threshold_pct: float) -> Verdict:
    change = PairedChange(finding.change_pct, finding.ci_low_pct, finding.ci_high_pct, finding.rounds)
    return verdict_of(change, threshold_pct)


def run_self_test(config: GateConfig = GateConfig(), *, targets: Sequence[str] = TARGETS,
                  levels_pct: Sequence[float] = LEVELS_PCT, repeats: int = REPEATS,
                  unchanged_repeats: int = UNCHANGED_REPEATS, thresholds: Sequence[float] = THRESHOLDS_PCT,
                  data_dir: str | Path | None = None,
                  log: Log = lambda _m: None, progress: bool = False) -> SelfTestResult:

    tree = HEAD_TREE
    plan: list[tuple[str | None, float]] = [(None, 0.0)] * unchanged_repeats
    plan += [(t, level) for level in levels_pct for t in targets for _ in range(repeats)]
    case_specs(config)  # fails early on a pattern that matches no case
    runs: list[SelfTestRun] = []
    with tempfile.TemporaryDirectory(prefix="optcv-selftest-") as tmp:
        workdir = Path(tmp)
        _, root = prepare_inputs(workdir, data_dir)
        plain = Side("base", sys.executable, tree)
        built = build_artifacts(plain, workdir, config.models, root, default_cache_dir())
        for index, (target, level) in enumerate(plan):
            # Both sides get a sitecustomize.py, in folders of the same name length, importing the same
            # modules in the same order; only the head's wraps its target.
            base = Side("base", sys.executable, tree,
                        extra_path=(write_injection(workdir / f"inject-b-{index:04d}", NONE, 0.0),))
            head = Side("head", sys.executable, tree, extra_path=(write_injection(
                workdir / f"inject-h-{index:04d}", target or NONE, level / 100),))
            run_config = GateConfig(**{**asdict(config), "seed": config.seed + index, "profile_ms": 0.0})
            result = measure(base, head, run_config, Thresholds(min(thresholds)), data_dir=root,
                             cache_dir=default_cache_dir(), workdir=workdir, log=lambda _m: None,
                             artifacts={"base": built, "head": built})
            runs.append(SelfTestRun(target, level, run_config.seed, result.findings, result.seconds,
                                    {f.case: f for f in result.retested}))
            worst = max(result.findings, key=lambda f: f.change_pct)
            log(f"self-test run {index + 1}/{len(plan)}: {target or 'unchanged'} +{level:g} %: "
                f"{len(result.regressions)} case(s) failed; largest change {worst.case} {worst.change_pct:+.1f} % "
                f"({result.seconds:.0f} s)")
    return SelfTestResult(runs, tuple(thresholds), asdict(config), environment_info())
