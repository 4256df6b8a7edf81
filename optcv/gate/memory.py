"""Each case's resident memory, A/B: the peak the case adds to a process, over its set-up and its calls.

Every measurement is a child forked from a side's memory worker, which has imported the runtimes and loaded the
inputs but run nothing: the child's peak (VmHWM, reset at its start) less its resident memory at that start is
what the case alone made resident — the model's weights, the runtime's session and arenas, the activations of
its calls — with nothing the process held or freed before in it. Repeats alternate the sides in a seeded
order; a case fails when every head repeat lies above every base one and the growth exceeds its threshold
(`optcv.gate.verdict.repeat_change`). What stays resident per call after the warm-up (a leak) is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optcv.gate.sides import Side
from optcv.gate.verdict import MeasureFinding, Thresholds, judge_repeats
from optcv.gate.workers import Worker

WARMUP_CALLS = 2
MEASURED_CALLS = 5


def measure_memory(sides: Sequence[Side], specs: Sequence[dict[str, Any]], setup: dict[str, dict[str, Any]],
                   thresholds: Thresholds, workdir: Path, repeats: int, seed: int = 0) -> list[MeasureFinding]:
    """Per case, `repeats` measurements of each side, each repeat in children of its own memory worker per side:
    repeat r's workers get the same environment padding on both sides and another one per r, so that where a
    process's memory lies (an arena's last block fitting or not) shows as spread, not as a change."""
    rng = np.random.default_rng([seed, 22])
    pads = rng.integers(0, 4096, repeats)
    pools = [[Worker(side, "memory", workdir, index=90 + r, pad=int(pads[r])) for side in sides]
             for r in range(repeats)]
    try:
        for worker in (w for pool in pools for w in pool):
            worker.ask({"op": "setup", "inputs": setup[worker.side.label]["inputs"],
                        "artifacts": setup[worker.side.label]["artifacts"]})
        return [_measure_case(pools, spec, thresholds, rng) for spec in specs]
    finally:
        for worker in (w for pool in pools for w in pool):
            worker.close()


def _measure_case(pools: Sequence[Sequence[Worker]], spec: dict[str, Any], thresholds: Thresholds,
                  rng: np.random.Generator) -> MeasureFinding:
    answers: dict[str, list[dict[str, Any]]] = {w.side.label: [] for w in pools[0]}
    for pool in pools:
        for index in rng.permutation(len(pool)):
            worker = pool[int(index)]
            answers[worker.side.label].append(worker.ask({"op": "memory", "spec": spec, "calls": MEASURED_CALLS,
                                                          "warmup": WARMUP_CALLS}))
    peaks = {label: [a["peak_kib"] for a in got] for label, got in answers.items()}
    retained = {f"{label}_retained_kib_per_call": float(np.median([a["retained_kib_per_call"] for a in got]))
                for label, got in answers.items()}
    return judge_repeats("memory", spec["id"], peaks["base"], peaks["head"],
                         thresholds.for_case(spec["id"], "memory"), {**retained, "calls": MEASURED_CALLS})
