"""Recall and false steps of optcv.history.steps on synthetic series, for the README's table.

Each series: 40 runs of one case; noise between runs N(0, noise) relative; each run's own 95 % interval ±1.96 x
the within-run noise. A step of `size` % at run 20 is recalled when a step is found within one run of it; a false
step is any step found in a series with none, or any other step found beside the real one.

    python benchmarks/proofs/steps_table.py
"""

from __future__ import annotations

import numpy as np

from optcv.history.steps import find_steps

SERIES, RUNS, AT = 200, 40, 20


def rates(size: float, between: float, within: float, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    recalled = false = 0
    for _ in range(SERIES):
        level = np.full(RUNS, 100.0)
        level[AT:] *= 1 + size / 100
        values = level * (1 + rng.normal(0, between / 100, RUNS))
        half = level * within / 100 * 1.96
        steps = find_steps(values, values - half, values + half)
        hit = [s for s in steps if size and abs(s.index - AT) <= 1]
        recalled += bool(hit)
        false += len(steps) - (1 if hit else 0)
    return recalled / SERIES, false / SERIES


def main() -> None:
    print("| noise between runs | interval per run | step | found at its run | false steps per series |")
    print("|---:|---:|---:|---:|---:|")
    for between, within in ((1, 1), (2, 2), (5, 2)):
        for size in (0, 3, 5, 10, 20):
            recall, false = rates(size, between, within)
            found = "—" if size == 0 else f"{recall * SERIES:.0f}/{SERIES}"
            print(f"| {between} % | ±{within * 1.96:.1f} % | {size:+d} % | {found} | {false:.3f} |")


if __name__ == "__main__":
    main()
