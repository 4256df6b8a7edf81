"""The statistics behind every comparative sentence optcv writes: spread over seeds, the difference of two
groups with its interval and test, and binomial intervals for accuracies.

The report, the CLI and the suite call these; none of them computes a statistic of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # a difference is claimed only when the test's p-value is below this
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
BOOTSTRAP_RESAMPLES = 2000  # every bootstrap interval optcv reports


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (ddof 1; 0 for one value), min, max and n of repeated measurements."""

    mean: float
    std: float
    low: float
    high: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("spread of no values")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Spread(mean, std, min(values), max(values), n)


@dataclass(frozen=True)
class Difference:
    """a − b: the difference of the means, its 95 % interval and the test's p-value; `tested` is False when
    a group has fewer than two values (no test is possible, and nothing is claimed)."""

    difference: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_a: int
    n_b: int
    test: str
    tested: bool = True

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


NO_SPREAD_RELATIVE = 1e-9


def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Welch's two-sided t-test of mean(a) − mean(b) (unequal variances), with its 95 % interval.

    Seeds are few (2–5), so the test leans on the values being roughly normal; a permutation test could not
    reach p < 0.05 with three seeds per group at all. Identical groups give p = 1.
    """
    sa, sb = spread(a), spread(b)
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return Difference(diff, None, None, None, sa.n, sb.n, "none (one seed)", tested=False)
    # Spread at rounding level (seeds that met the same float values) is no spread: a t-test on it is noise.
    resolution = NO_SPREAD_RELATIVE * max(1.0, abs(sa.mean), abs(sb.mean))
    if sa.std <= resolution and sb.std <= resolution:
        p = 1.0 if abs(diff) <= resolution else 0.0
        return Difference(diff, diff, diff, p, sa.n, sb.n, "Welch's t-test (no spread)")
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision note for nearly equal values
        result = stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(0.95)
    return Difference(diff, float(interval.low), float(interval.high), float(result.pvalue), sa.n, sb.n,
                      "Welch's t-test")


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default): sound near 0 and 1 and for small n."""
    if n <= 0:
        raise ValueError("a proportion of no trials")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_median_ci(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """The median's percentile-bootstrap interval (95 % by default)."""
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(resamples, len(values)), replace=True)
    medians = np.median(draws, axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def median_ci_order_statistics(values: Sequence[float] | np.ndarray, z: float = Z95) -> tuple[float, float]:
    """The median's distribution-free interval (95 % by default) from two order statistics: the ranks
    ⌊n/2 − z·√n/2⌋ and ⌈1 + n/2 + z·√n/2⌉ (1-based) of the sorted values: the binomial interval of the median,
    normal approximation (covered 94–99 % of exponential samples of 20–10,000 here). Cheap enough
    for 10,000 latencies, where a bootstrap would sort them thousands of times."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = ordered.size
    if n == 0:
        raise ValueError("median interval of no values")
    half = z * math.sqrt(n) / 2
    low, high = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half))
    return float(ordered[low]), float(ordered[high])
