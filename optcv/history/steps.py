"""Step changes in a case's history: where its level moved, and only where the data shows it did.

Binary segmentation with an interval rule. A segment's level is the median of its points' values; the level's
interval is the hull of two intervals: the distribution-free 95 % interval of that median over the segment's
values (order statistics: the scatter between runs, which one run's own interval does not see), and the median of
the points' own intervals (the noise within a run). A split is placed where it leaves the least absolute
deviation from each side's median (L1 binary segmentation) and accepted only where the two sides' level intervals
do not overlap, each side holding at least `min_size` points; then each side is searched again. With few points
the order-statistic interval is the whole range of a side's values, so a step is then claimed only where every
value after it lies beyond every value before it.

Measured on synthetic series of 40 points (tests/test_history.py holds the boundary): with 2 % noise between runs
and ±3.9 % intervals per point, a 10 % step was found 196/200 and a 5 % step 0/200, with no false step in 300
series of no change; with 5 % noise, a 15 % step 183/200 and 3 false steps in 300 series.

It assumes points of one machine, in time order; a step at the newest end needs `min_size` points after it
before it is claimed (one run is not a trend).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optcv.stats import median_ci_order_statistics

MIN_SEGMENT = 3


@dataclass(frozen=True)
class Level:
    """A segment's level: the median of its values, and the interval of that level."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Step:
    """The level changed between point `index - 1` and point `index`."""

    index: int
    before: Level
    after: Level

    @property
    def change_pct(self) -> float:
        return (self.after.value / self.before.value - 1) * 100 if self.before.value else float("inf")

    @property
    def up(self) -> bool:
        return self.after.value > self.before.value


def _prefix_costs(values: Sequence[float]) -> list[float]:
    """For every k, how far values[:k] lie from their median (L1), in one pass: a max-heap of the lower half and a
    min-heap of the upper half, with their sums."""
    low: list[float] = []  # negated: a max-heap
    high: list[float] = []
    low_sum = high_sum = 0.0
    costs = [0.0]
    for value in values:
        if low and value > -low[0]:
            heapq.heappush(high, value)
            high_sum += value
        else:
            heapq.heappush(low, -value)
            low_sum += value
        if len(low) > len(high) + 1:
            moved = -heapq.heappop(low)
            low_sum -= moved
            heapq.heappush(high, moved)
            high_sum += moved
        elif len(high) > len(low):
            moved = heapq.heappop(high)
            high_sum -= moved
            heapq.heappush(low, -moved)
            low_sum += moved
        median = -low[0]  # a median: every value between the two middle ones gives the same L1 cost
        costs.append(median * len(low) - low_sum + high_sum - median * len(high))
    return costs


def level_of(values: Sequence[float], lows: Sequence[float | None], highs: Sequence[float | None]) -> Level:
    values_arr = np.asarray(values, dtype=float)
    low, high = median_ci_order_statistics(values_arr)
    known = [(lo, hi) for lo, hi in zip(lows, highs, strict=True) if lo is not None and hi is not None]
    if known:
        low = min(low, float(np.median([k[0] for k in known])))
        high = max(high, float(np.median([k[1] for k in known])))
    return Level(float(np.median(values_arr)), low, high, len(values_arr))


def find_steps(values: Sequence[float], lows: Sequence[float | None] | None = None,
               highs: Sequence[float | None] | None = None, min_size: int = MIN_SEGMENT) -> list[Step]:
    """The steps of one series (oldest first), in order of position."""
    if min_size < 2:
        raise ValueError(f"a segment needs at least 2 points, got min_size {min_size}")
    n = len(values)
    lows = list(lows) if lows is not None else [None] * n
    highs = list(highs) if highs is not None else [None] * n
    if not len(lows) == len(highs) == n:
        raise ValueError("values, lows and highs must be as long as each other")
    steps: list[Step] = []
    _split(list(values), lows, highs, 0, n, min_size, steps)
    return sorted(steps, key=lambda s: s.index)


def _split(values: list[float], lows: list[float | None], highs: list[float | None], start: int, stop: int,
           min_size: int, found: list[Step]) -> None:
    candidates = range(start + min_size, stop - min_size + 1)
    if not candidates:
        return
    segment = values[start:stop]
    before_costs, after_costs = _prefix_costs(segment), _prefix_costs(segment[::-1])[::-1]
    k = min(candidates, key=lambda c: before_costs[c - start] + after_costs[c - start])
    before = level_of(values[start:k], lows[start:k], highs[start:k])
    after = level_of(values[k:stop], lows[k:stop], highs[k:stop])
    if before.high >= after.low and after.high >= before.low:
        return
    step = Step(k, before, after)
    found.append(step)
    _split(values, lows, highs, start, step.index, min_size, found)
    _split(values, lows, highs, step.index, stop, min_size, found)
