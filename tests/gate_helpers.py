"""Shared by the gate's unit tests: a case from its name, rounds of timing noise, a finding, operator profiles."""

from __future__ import annotations

import numpy as np

from optcv.gate.attribution import OUTSIDE
from optcv.gate.verdict import CaseFinding
from optcv.gate.worker.protocol import CaseSpec


def spec_of(case_id: str) -> CaseSpec:
    """A prediction case from its name (model/backend/bN/tN)."""
    model, backend, batch, threads = case_id.split("/")
    return CaseSpec(model, "predict", backend, int(batch[1:]), int(threads[1:]))


def noisy_rounds(n=40, level=100.0, noise=0.01, seed=0):
    return level * np.exp(np.random.default_rng(seed).normal(0, noise, n))


def finding_of(case, change, verdict):
    return CaseFinding(case, 100.0, 100.0 + change, change, change - 1.0, change + 1.0, 3.0, verdict, 30, 10)


def profiles_of(n, seed, extra_op=0.0, outside_wait=0.0, extra_name="aten::gelu"):
    """n profiles of a call with a 100 µs convolution, 20 µs of other operators and 15 µs outside, ±2 % noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        noise = rng.normal(1.0, 0.02, 4)
        profile = {"aten::conv2d": 100 * noise[0], "aten::relu": 20 * noise[1], OUTSIDE: (15 + outside_wait) * noise[2]}
        if extra_op:
            profile[extra_name] = extra_op * noise[3]
        out.append(profile)
    return out
