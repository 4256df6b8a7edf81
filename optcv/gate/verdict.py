"""The A/B gate's statistics and verdicts: base and head timed in the same job, paired by round.

Each case is timed in rounds; in every round each worker of both sides runs the same number of calls, one
worker at a time in a seeded random order. A round gives each side one median, so the head ÷ base ratio of
a round compares the two sides under the same machine conditions. The change of a case is the median of
its per-round ratios, with a bootstrap 95 % interval over rounds. Rule (asv's shape): a case is a
regression when the interval excludes no change **and** the estimate exceeds the case's threshold.
A faster head is reported, never a failure.
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

from optcv.errors import BaselineInvalid, BaselineMissing, OptcvError, ParityFailure, SpeedRegression
from optcv.stats import BOOTSTRAP_RESAMPLES

DEFAULT_THRESHOLD_PCT = 3.0
THRESHOLDS_SCHEMA = "optcv-gate-thresholds/1"
RESULT_SCHEMA = "optcv-ab-gate/1"


class Verdict(str, Enum):
    REGRESSION = "regression"
    SLOWER_WITHIN_THRESHOLD = "slower, within threshold"
    NO_CHANGE = "no significant change"
    FASTER = "faster"


class GateSetupError(OptcvError):
    """The gate could not be set up: a revision, an interpreter, a worker or an artifact failed."""


class PerformanceRegression(SpeedRegression):
    """A gated case got slower beyond its threshold; carries the typed findings."""
    def __init__(self, findings: Sequence[CaseFinding]):
        self.findings = list(findings)
        super().__init__("; ".join(f"{f.case} {f.change_pct:+.1f} % (95 % CI {f.ci_low_pct:+.1f} … "
                                   f"{f.ci_high_pct:+.1f} %, threshold {f.threshold_pct:g} %)" for f in findings))


@dataclass(frozen=True)
class PairedChange:
    """Head relative to base, in %: +5 means the head takes 5 % longer per call."""

    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    rounds: int


def paired_change(base_us: Any, head_us: Any, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                  level: float = 0.95) -> PairedChange:
    """Head ÷ base from per-round medians shaped (pairs, rounds) (a 1-D sequence is one pair).

    Pair i is base worker i and head worker i, which share a memory layout (see ab.worker_pool). The estimate
    is the mean over pairs of each pair's median per-round log ratio; the interval is a two-level percentile
    bootstrap (pairs, then rounds within each), so a difference between processes widens it instead of
    passing for a change of the code.
    """
    base, head = np.atleast_2d(np.asarray(base_us, dtype=float)), np.atleast_2d(np.asarray(head_us, dtype=float))
    if base.shape != head.shape or base.shape[1] < 2:
        raise ValueError(f"need two or more paired rounds, got shapes {base.shape} and {head.shape}")
    if not (np.all(base > 0) and np.all(head > 0)):
        raise ValueError("round medians must be positive")
    log_ratios = np.log(head / base)
    pairs, rounds = log_ratios.shape
    rng = np.random.default_rng(seed)
    pick_pairs = rng.integers(0, pairs, (resamples, pairs, 1))
    pick_rounds = rng.integers(0, rounds, (resamples, pairs, rounds))
    draws = np.median(log_ratios[pick_pairs, pick_rounds], axis=2).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    estimate = np.median(log_ratios, axis=1).mean()
    pct = lambda v: float(np.expm1(v) * 100)  # noqa: E731
    return PairedChange(pct(estimate), pct(low), pct(high), rounds)


def verdict_of(change: PairedChange, threshold_pct: float) -> Verdict:
    if change.ci_low_pct > 0:
        return Verdict.REGRESSION if change.change_pct > threshold_pct else Verdict.SLOWER_WITHIN_THRESHOLD
    if change.ci_high_pct < 0:
        return Verdict.FASTER
    return Verdict.NO_CHANGE


@dataclass(frozen=True)
class Thresholds:
    """The default threshold in %, and optional per-case ones by glob pattern (the first match wins)."""
    default_pct: float = DEFAULT_THRESHOLD_PCT
    per_case: tuple[tuple[str, float], ...] = ()

    def for_case(self, case: str) -> float:
        for pattern, value in self.per_case:
            if fnmatch.fnmatchcase(case, pattern):
                return value
        return self.default_pct

    @classmethod
    def load(cls, path: str | Path | None, default_pct: float | None = None) -> Thresholds:
        """Read a thresholds file ({"schema", "default", "cases": {pattern: pct}}); `default_pct`
        (the --threshold option) overrides the file's default."""
        if path is None:
            return cls(DEFAULT_THRESHOLD_PCT if default_pct is None else _check_pct(default_pct, "--threshold"))
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GateSetupError(f"thresholds file {path} cannot be read ({exc}); fix it or drop --thresholds") from exc
        if not isinstance(raw, dict) or raw.get("schema") != THRESHOLDS_SCHEMA or not isinstance(
                raw.get("cases", {}), dict):
            raise GateSetupError(f"thresholds file {path} is not an {THRESHOLDS_SCHEMA} object with a 'cases' map")
        file_default = _check_pct(raw.get("default", DEFAULT_THRESHOLD_PCT), f"{path}: default")
        cases = tuple((str(k), _check_pct(v, f"{path}: {k}")) for k, v in raw.get("cases", {}).items())
        return cls(file_default if default_pct is None else _check_pct(default_pct, "--threshold"), cases)


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

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.REGRESSION


def judge(case: str, base_rounds_us: Any, head_rounds_us: Any, threshold_pct: float,
          calls_per_turn: int, seed: int = 0) -> CaseFinding:
    """The finding of one case from per-round medians in µs, shaped (pairs, rounds) or (rounds,)."""
    change = paired_change(base_rounds_us, head_rounds_us, seed=seed)
    base, head = np.atleast_2d(base_rounds_us), np.atleast_2d(head_rounds_us)
    pairs = tuple(round(float(np.expm1(np.median(np.log(h / b))) * 100), 3) for b, h in zip(base, head, strict=True))
    return CaseFinding(case, float(np.median(base)), float(np.median(head)), change.change_pct,
                       change.ci_low_pct, change.ci_high_pct, threshold_pct, verdict_of(change, threshold_pct),
                       change.rounds, calls_per_turn, pairs)


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
    # The first-pass findings of cases that failed and were timed again with fresh workers; `findings` holds
    # the re-test's, which decide.
    retested: list[CaseFinding] = field(default_factory=list)

    @property
    def regressions(self) -> list[CaseFinding]:
        return [f for f in self.findings if f.failed]

    def raise_for_regressions(self) -> None:
        if self.regressions:
            raise PerformanceRegression(self.regressions)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": RESULT_SCHEMA, "base": self.base, "head": self.head, "protocol": self.protocol,
                "environment": self.environment, "seconds": self.seconds, "notes": self.notes,
                "findings": [{**asdict(f), "verdict": f.verdict.value} for f in self.findings],
                "first_pass_of_retested": [{**asdict(f), "verdict": f.verdict.value} for f in self.retested]}


def failure_kind(exc: BaseException) -> str | None:
    """The kind of a failed check, by its exception type, for the suite's verdict section."""
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (SpeedRegression, "SPEED REGRESSION"), (ParityFailure, "PARITY FAILURE"),
        (BaselineMissing, "BASELINE MISSING"), (BaselineInvalid, "BASELINE INVALID"),
        (GateSetupError, "GATE SET-UP ERROR"))
    return next((name for kind, name in kinds if isinstance(exc, kind)), None)
