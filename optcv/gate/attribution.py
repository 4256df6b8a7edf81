"""Where a failing case's time went: per-operator changes between base and head, each with an interval.

A profile is one side's per-call time per operator over one run of profiled calls, plus the time of those
calls outside every operator (the Python path, optcv's own code, a wait), taken from the same profiled loop so
that it cannot go below zero. Profiles of base and head are taken interleaved, several times; repeat r of the
head is paired with repeat r of the base, and an operator's change is the median of the paired differences
with a percentile-bootstrap interval. Only a change whose interval excludes zero is named: one profile per side
(what the gate did before) put a wait outside every operator into a convolution half of the time.

The machine's pace moves between profiles on a shared VM (TutorialNet's profiled PyTorch call: 220-470 µs), and
it moves every row of a profile together. So each head profile is first brought to its base's pace: divided by
the median, over the rows that hold at least 1 % of the base's call, of head ÷ base. A change in one place
leaves that median alone; a change of the machine's pace moves all rows and is divided out. A wait outside every
operator, alternated with none in one process (8 pairs, 6 tries, +10 % of the call): named 6/6 in PyTorch and
5/6 in ONNX Runtime this way, 5/6 and 2/6 on the raw differences, which also read +32 ... +65 µs for a 28 µs wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from optcv.stats import BOOTSTRAP_RESAMPLES, bootstrap_median_ci

OUTSIDE = "(outside operators)"
PROFILE_REPEATS = 8  # profiles per side, interleaved
PACE_ROW_SHARE = 0.01  # rows below this share of the base's call are too noisy to say the machine's pace


@dataclass(frozen=True)
class OperatorChange:
    operator: str
    base_us: float  # median over the base's profiles, per call
    head_us: float  # at the base's pace (head_paces)
    change_us: float  # median of the paired head - base differences
    ci_low_us: float
    ci_high_us: float

    @property
    def significant(self) -> bool:
        return self.ci_low_us > 0 or self.ci_high_us < 0


def outside_us(wall_us: float, ops_us: dict[str, float]) -> float:
    """A profiled call's time outside every operator: never negative (operators timed on several threads can
    add up to more than the wall time; then none is outside)."""
    return max(0.0, wall_us - sum(ops_us.values()))


def operator_changes(base: Sequence[dict[str, float]], head: Sequence[dict[str, float]],
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[OperatorChange]:
    """Per operator (and OUTSIDE), base and head paired by repeat, the head at its base's pace; the largest
    changes first."""
    if len(base) != len(head) or not base:
        raise ValueError(f"profiles must be paired: {len(base)} base, {len(head)} head")
    paces = head_paces(base, head)
    paced = [{name: us / pace for name, us in h.items()} for h, pace in zip(head, paces, strict=True)]
    names = sorted({name for profile in (*base, *head) for name in profile})
    changes = []
    for name in names:
        b = np.array([p.get(name, 0.0) for p in base])
        h = np.array([p.get(name, 0.0) for p in paced])
        low, high = bootstrap_median_ci(h - b, resamples=resamples, seed=seed)
        changes.append(OperatorChange(name, float(np.median(b)), float(np.median(h)), float(np.median(h - b)),
                                      low, high))
    return sorted(changes, key=lambda c: -abs(c.change_us))


def head_paces(base: Sequence[dict[str, float]], head: Sequence[dict[str, float]]) -> list[float]:
    """Per pair, the head profile's pace against its base's: the median head ÷ base over the rows that hold at
    least PACE_ROW_SHARE of the base's call (1.0 where fewer than three rows do)."""
    paces = []
    for b, h in zip(base, head, strict=True):
        total = sum(b.values())
        ratios = [h[name] / us for name, us in b.items() if name in h and us > 0 and us >= PACE_ROW_SHARE * total]
        paces.append(float(np.median(ratios)) if len(ratios) >= 3 else 1.0)
    return paces


def attribution(base: Sequence[dict[str, float]], head: Sequence[dict[str, float]], calls: int,
                seed: int = 0) -> dict[str, Any]:
    """What a failing case's JSON keeps: the repeats, and every operator's change with its interval."""
    return {"repeats": len(base), "calls_per_profile": calls, "base": list(base), "head": list(head),
            "head_paces": head_paces(base, head),
            "changes": [asdict(c) for c in operator_changes(base, head, seed=seed)]}


def named_changes(profile: dict[str, Any]) -> list[OperatorChange]:
    """The changes whose interval excludes zero, largest first."""
    return [c for c in (OperatorChange(**c) for c in profile["changes"]) if c.significant]
