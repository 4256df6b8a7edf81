"""The A/B gate's statistics and verdicts: base and head timed in the same job, paired by round and by process.

Each case is timed in rounds by k pairs of worker processes (a base and a head process each, set up at the same
moment: optcv.gate.workers); in every round each worker runs the same number of calls, one worker at a time
in a seeded random order. A round gives each worker one median, so the head ÷ base ratio of a round compares the
two sides under the same machine conditions. A pair's change is the median of its per-round ratios; the case's is
the mean of its pairs'. Its 95 % interval takes the pair as the unit (a t interval on the pairs' changes, k − 1
degrees of freedom): it carries every level of variation between the sides, the rounds' noise and each process's
own offset (its heap, its placement), which no number of rounds in the same processes averages out. Rule (asv's
shape): a case is a regression when the interval excludes no change **and** the estimate exceeds the case's
threshold. A faster head is reported, never a failure.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from optcv.errors import (
    BaselineInvalid,
    BaselineMissing,
    GateSetupError,
    ParityFailure,
    PerformanceRegression,
    SpeedRegression,
)
from optcv.stats import BOOTSTRAP_RESAMPLES

DEFAULT_THRESHOLD_PCT = 3.0
THRESHOLDS_SCHEMA = "optcv-gate-thresholds/1"
RESULT_SCHEMA = "optcv-ab-gate/1"
SAME_CODE_SCHEMA = "optcv-gate-same-code/1"  # a gate that timed nothing (optcv.gate.run.SameCode)


class Verdict(str, Enum):
    REGRESSION = "regression"
    SLOWER_WITHIN_THRESHOLD = "slower, within threshold"
    NO_CHANGE = "no significant change"
    FASTER = "faster"


@dataclass(frozen=True)
class PairedChange:
    """Head relative to base, in %: +5 means the head takes 5 % longer per call."""

    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    rounds: int
    pairs: int = 1
    pair_spread_pct: float = 0.0  # the standard deviation of the pairs' changes
    round_noise_pct: float = 0.0  # the standard error of a pair's change that its rounds' noise alone makes (rms)
    pairs_disagree: bool = False  # the pairs' changes differ more than their rounds' noise explains

    @property
    def half_width_pct(self) -> float:
        return (self.ci_high_pct - self.ci_low_pct) / 2


def paired_change(base_us: Any, head_us: Any, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                  level: float = 0.95, resample_pairs: bool = True) -> PairedChange:
    """Head ÷ base from per-round medians: one sequence of rounds per worker pair (a flat sequence is one pair).
    Pairs may hold different numbers of rounds (a case judged on the pairs of two passes).

    The estimate is the mean over pairs of each pair's median per-round log ratio. With two or more pairs the
    interval is a t interval on those pair changes: the pair is the unit, so a process's own offset widens it
    instead of passing for a change of the code. (A percentile bootstrap over so few pairs is too narrow: in
    tests/test_gate.py's simulation of a per-process offset, the two-level bootstrap held zero in 62 % of unchanged
    gates with 2 pairs and 80 % with 4; the t interval in 95 %.) With one pair, or with `resample_pairs` false, only
    the rounds' noise is known: a percentile bootstrap of
    each pair's rounds, the pairs held as they are (the part that more rounds in the same processes can narrow).
    """
    log_ratios = [np.log(h / b) for b, h in _paired_rounds(base_us, head_us)]
    pairs = len(log_ratios)
    rng = np.random.default_rng(seed)
    # Per pair, its change resampled from its rounds: the rounds' noise in a pair's change.
    resampled = np.stack([np.median(r[rng.integers(0, len(r), (resamples, len(r)))], axis=1) for r in log_ratios])
    pair_changes = np.array([np.median(r) for r in log_ratios])
    estimate = float(pair_changes.mean())
    round_se = resampled.std(axis=1, ddof=1)
    tail = (1 - level) / 2
    if pairs == 1 or not resample_pairs:
        low, high = np.percentile(resampled.mean(axis=0), [tail * 100, 100 - tail * 100])
    else:
        from scipy import stats

        half = stats.t.ppf(1 - tail, pairs - 1) * pair_changes.std(ddof=1) / np.sqrt(pairs)
        low, high = estimate - half, estimate + half
    pct = lambda v: float(np.expm1(v) * 100)  # noqa: E731
    return PairedChange(pct(estimate), pct(low), pct(high), min(len(r) for r in log_ratios), pairs,
                        float(pair_changes.std(ddof=1) * 100) if pairs > 1 else 0.0,
                        float(np.sqrt(np.mean(round_se ** 2)) * 100),
                        _pairs_disagree(pair_changes, round_se, level))


def _pairs_disagree(pair_changes: np.ndarray, round_se: np.ndarray, level: float) -> bool:
    """Cochran's Q: whether the pairs' changes differ more than their own rounds' noise explains (a per-process
    offset the rounds cannot see), at `level`."""
    if len(pair_changes) < 2:
        return False
    from scipy import stats

    weights = 1 / np.maximum(round_se, 1e-12) ** 2
    mean = np.sum(weights * pair_changes) / np.sum(weights)
    q = float(np.sum(weights * (pair_changes - mean) ** 2))
    return q > stats.chi2.ppf(level, len(pair_changes) - 1)


def _paired_rounds(base_us: Any, head_us: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per worker pair, its (base, head) round medians as arrays, checked."""
    def per_pair(rounds: Any) -> list[np.ndarray]:
        rounds = list(rounds)
        flat = len(rounds) > 0 and np.ndim(rounds[0]) == 0
        return [np.asarray(rounds, dtype=float)] if flat else [np.asarray(r, dtype=float) for r in rounds]

    base, head = per_pair(base_us), per_pair(head_us)
    shapes = [b.shape for b in base], [h.shape for h in head]
    if shapes[0] != shapes[1] or not base or min(len(b) for b in base) < 2:
        raise ValueError(f"need two or more paired rounds per pair, got rounds {shapes[0]} and {shapes[1]}")
    if not all(np.all(b > 0) and np.all(h > 0) for b, h in zip(base, head, strict=True)):
        raise ValueError("round medians must be positive")
    return list(zip(base, head, strict=True))


def verdict_of(change: PairedChange, threshold_pct: float) -> Verdict:
    if change.ci_low_pct > 0:
        return Verdict.REGRESSION if change.change_pct > threshold_pct else Verdict.SLOWER_WITHIN_THRESHOLD
    if change.ci_high_pct < 0:
        return Verdict.FASTER
    return Verdict.NO_CHANGE


# The other measures' default thresholds: a little above their resolution on unchanged gates (memory repeats within
# 0.1-1.6 %, instructions within 0.3 %), so that a real change of that size is caught (docs: memory and instructions).
MEASURE_DEFAULTS_PCT = {"time": DEFAULT_THRESHOLD_PCT, "memory": 5.0, "instructions": 0.5}


@dataclass(frozen=True)
class Thresholds:
    """Per measure, the default threshold in % and optional per-case ones by glob pattern (the first match wins);
    `default_pct` and `per_case` are time's."""
    default_pct: float = DEFAULT_THRESHOLD_PCT
    per_case: tuple[tuple[str, float], ...] = ()
    others: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...] = ()  # (measure, default, per case)

    def for_case(self, case: str, measure: str = "time") -> float:
        default, per_case = self.default_pct, self.per_case
        if measure != "time":
            default, per_case = next(((d, c) for m, d, c in self.others if m == measure),
                                     (MEASURE_DEFAULTS_PCT[measure], ()))
        # A pytest node id is matched as it is (its "[1]" is no glob's class), then by its parameter's id alone:
        # a suite's case `test_latency[tutorial/onnxruntime/b1/t1]` by `tutorial/onnxruntime/b1/t1`.
        names = (case, case[case.index("[") + 1:-1]) if case.endswith("]") and "[" in case else (case,)
        for pattern, value in per_case:
            if any(name == pattern or fnmatch.fnmatchcase(name, pattern) for name in names):
                return value
        return default

    @classmethod
    def load(cls, path: str | Path | None, default_pct: float | None = None) -> Thresholds:
        """Read a thresholds file ({"schema", "default", "cases": {pattern: pct}}, and optionally "memory" and
        "instructions" objects of the same shape); `default_pct` (the --threshold option) overrides the file's
        default for time."""
        if path is None:
            return cls(DEFAULT_THRESHOLD_PCT if default_pct is None else _check_pct(default_pct, "--threshold"))
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GateSetupError(f"thresholds file {path} cannot be read ({exc}); fix it or drop --thresholds") from exc
        if not isinstance(raw, dict) or raw.get("schema") != THRESHOLDS_SCHEMA:
            raise GateSetupError(f"thresholds file {path} is not an {THRESHOLDS_SCHEMA} object with a 'cases' map")
        file_default, cases = _section(raw, DEFAULT_THRESHOLD_PCT, str(path))
        others = tuple((m, *_section(raw[m], MEASURE_DEFAULTS_PCT[m], f"{path}: {m}"))
                       for m in ("memory", "instructions") if m in raw)
        return cls(file_default if default_pct is None else _check_pct(default_pct, "--threshold"), cases, others)


def _section(raw: Any, default: float, where: str) -> tuple[float, tuple[tuple[str, float], ...]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("cases", {}), dict):
        raise GateSetupError(f"thresholds file {where} is not an object with a 'cases' map")
    cases = tuple((str(k), _check_pct(v, f"{where}: {k}")) for k, v in raw.get("cases", {}).items())
    return _check_pct(raw.get("default", default), f"{where}: default"), cases


def _check_pct(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1000:
        raise GateSetupError(f"{what}: a threshold is a percentage between 0 and 1000, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CaseFinding:
    case: str
    base_median_us: float
    head_median_us: float
    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    threshold_pct: float
    verdict: Verdict
    rounds: int
    calls_per_turn: int
    pair_changes_pct: tuple[float, ...] = ()  # each worker pair's own median change
    profile: dict[str, Any] | None = None
    passes: int = 1  # pools of fresh workers whose pairs it is judged on (2: a failing or undecided case, timed again)
    pair_spread_pct: float = 0.0  # the standard deviation of the pairs' changes
    round_noise_pct: float = 0.0  # the standard error of a pair's change that its rounds' noise alone makes
    pairs_disagree: bool = False  # the pairs differ more than their rounds explain: a per-process offset

    @property
    def half_width_pct(self) -> float:
        """The case's measured resolution: its interval's half-width."""
        return (self.ci_high_pct - self.ci_low_pct) / 2

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.REGRESSION

    @property
    def undecided(self) -> bool:
        """Slower than its threshold by the estimate, but not significantly: the worker pairs disagree too much
        to tell a regression from a process's placement, so more processes must decide."""
        return self.undecided_at(self.threshold_pct)

    def undecided_at(self, threshold_pct: float) -> bool:
        return self.ci_low_pct <= 0 < threshold_pct < self.change_pct


@dataclass(frozen=True)
class MeasureFinding:
    """A case's memory or instruction count, base against head over a few repeats of each (`optcv.gate.memory`,
    `optcv.gate.instructions`), judged by the same rule as its time."""
    measure: str  # "memory" (peak resident KiB the case adds) or "instructions" (per call)
    case: str
    base: tuple[float, ...]
    head: tuple[float, ...]
    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    threshold_pct: float
    verdict: Verdict
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.REGRESSION

    @property
    def base_median(self) -> float:
        return float(np.median(self.base))

    @property
    def head_median(self) -> float:
        return float(np.median(self.head))


def repeat_change(base: Sequence[float], head: Sequence[float]) -> PairedChange:
    """Head ÷ base − 1 in % from a few repeats per side: the ratio of the medians, and as its interval the range of
    every head ÷ base ratio, so the change is significant only where every head repeat lies beyond every base
    one (with 3 and 3 repeats of identical code, a chance of 1 in 20 each way)."""
    b, h = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    if not (len(b) and len(h) and np.all(b > 0) and np.all(h > 0)):
        raise ValueError("need positive repeats on both sides")
    ratios = h[:, None] / b[None, :]
    pct = lambda v: float((v - 1) * 100)  # noqa: E731
    return PairedChange(pct(np.median(h) / np.median(b)), pct(ratios.min()), pct(ratios.max()), min(len(b), len(h)))


def judge_repeats(measure: str, case: str, base: Sequence[float], head: Sequence[float], threshold_pct: float,
                  detail: dict[str, Any] | None = None) -> MeasureFinding:
    change = repeat_change(base, head)
    return MeasureFinding(measure, case, tuple(map(float, base)), tuple(map(float, head)), change.change_pct,
                          change.ci_low_pct, change.ci_high_pct, threshold_pct, verdict_of(change, threshold_pct),
                          detail or {})


def judge(case: str, base_rounds_us: Any, head_rounds_us: Any, threshold_pct: float,
          calls_per_turn: int, seed: int = 0, passes: int = 1) -> CaseFinding:
    """The finding of one case from per-round medians in µs, one sequence of rounds per worker pair (or one
    flat sequence), from `passes` pools of workers."""
    change = paired_change(base_rounds_us, head_rounds_us, seed=seed)
    paired = _paired_rounds(base_rounds_us, head_rounds_us)
    pairs = tuple(round(float(np.expm1(np.median(np.log(h / b))) * 100), 3) for b, h in paired)
    return CaseFinding(case, float(np.median(np.concatenate([b for b, _ in paired]))),
                       float(np.median(np.concatenate([h for _, h in paired]))), change.change_pct,
                       change.ci_low_pct, change.ci_high_pct, threshold_pct, verdict_of(change, threshold_pct),
                       change.rounds, calls_per_turn, pairs, passes=passes, pair_spread_pct=change.pair_spread_pct,
                       round_noise_pct=change.round_noise_pct, pairs_disagree=change.pairs_disagree)


@dataclass
class GateResult:
    """Everything one A/B gate measured: per-case findings, both sides, the machine, the protocol."""
    base: dict[str, Any]
    head: dict[str, Any]
    findings: list[CaseFinding]
    protocol: dict[str, Any]
    environment: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)
    # The first-pass findings of cases that failed or were undecided and were timed again with fresh workers;
    # `findings` holds the last word (a failure's re-test; an undecided case's judgement on both passes).
    retested: list[CaseFinding] = field(default_factory=list)
    measured: list[MeasureFinding] = field(default_factory=list)  # memory and instructions, where asked for
    # The cases that could not be compared, each with why (a test new in the head, failing or skipped on a side):
    # never a pass in silence.
    not_compared: list[tuple[str, str]] = field(default_factory=list)

    @property
    def regressions(self) -> list[CaseFinding]:
        """The cases that got slower beyond their threshold."""
        return [f for f in self.findings if f.failed]

    @property
    def failures(self) -> list[CaseFinding | MeasureFinding]:
        """Every failing finding of every measure: what decides the gate."""
        return [*self.regressions, *(f for f in self.measured if f.failed)]

    def raise_for_regressions(self) -> None:
        if self.failures:
            raise PerformanceRegression(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": RESULT_SCHEMA, "base": self.base, "head": self.head, "protocol": self.protocol,
                "environment": self.environment, "seconds": self.seconds, "notes": self.notes,
                "findings": [{**asdict(f), "verdict": f.verdict.value} for f in self.findings],
                "first_pass_of_retested": [{**asdict(f), "verdict": f.verdict.value} for f in self.retested],
                "measured": [{**asdict(f), "verdict": f.verdict.value} for f in self.measured],
                "not_compared": [{"case": case, "why": why} for case, why in self.not_compared]}


def failure_kind(exc: BaseException) -> str | None:
    """The kind of a failed check, by its exception type, for the suite's verdict section."""
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (SpeedRegression, "SPEED REGRESSION"), (ParityFailure, "PARITY FAILURE"),
        (BaselineMissing, "BASELINE MISSING"), (BaselineInvalid, "BASELINE INVALID"),
        (GateSetupError, "GATE SET-UP ERROR"))
    return next((name for kind, name in kinds if isinstance(exc, kind)), None)
