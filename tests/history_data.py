"""Synthetic histories for the history tests: runs on two machines, with known steps and known noise."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from optcv.history.records import CHANGE_PCT, GATE, LATENCY_US, PYTEST_BENCHMARK, Machine, Measurement, RunRecord
from optcv.history.store import HistoryStore

AMD = Machine("AMD EPYC", ("avx", "avx2", "fma"), 2)
INTEL = Machine("Intel Xeon", ("avx", "avx2", "avx512f", "fma", "amx_tile"), 2)
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def noisy_levels(n: int, step_at: int | None, step_pct: float, noise_pct: float, seed: int) -> np.ndarray:
    level = np.full(n, 100.0)
    if step_at is not None:
        level[step_at:] *= 1 + step_pct / 100
    return level * (1 + np.random.default_rng(seed).normal(0, noise_pct / 100, n))


def fill_history(store: HistoryStore, runs_per_machine: int = 12, step_at: int = 6, step_pct: float = 20.0) -> dict:
    """Per machine: pytest-benchmark runs of two cases (`net/pytorch/b1` steps up by `step_pct` at run
    `step_at` on AMD only) and gate runs of one case, the gate after the step failing. Returns what was made."""
    made: dict = {"ids": [], "failed_gates": 0, "points": {}}
    for m_index, machine in enumerate((AMD, INTEL)):
        steady = noisy_levels(runs_per_machine, None, 0, 1.0, seed=10 + m_index)
        stepped = noisy_levels(runs_per_machine, step_at if machine is AMD else None, step_pct, 1.0, seed=20 + m_index)
        for i in range(runs_per_machine):
            when = START + timedelta(hours=2 * i + m_index)
            commit = f"{i:02x}" * 20
            values = {"net/pytorch/b1": stepped[i], "net/onnxruntime/b1": steady[i] / 4}
            store.add(RunRecord(PYTEST_BENCHMARK, when, machine, commit, "main", {"torch": "2.14.1"},
                                measurements=tuple(Measurement(c, LATENCY_US, v, v * 0.99, v * 1.01, 20)
                                                   for c, v in values.items())))
            for case in values:
                made["points"][case] = made["points"].get(case, 0) + 1
            failed = machine is AMD and i == step_at
            change = step_pct if failed else float(np.random.default_rng(i).normal(0, 1))
            verdict = "regression" if failed else "no significant change"
            made["failed_gates"] += failed
            gate_id = store.add(RunRecord(
                GATE, when + timedelta(minutes=30), machine, commit, "main", {"torch": "2.14.1"}, passed=not failed,
                summary=f"## optcv gate: {'1 of 1 cases slower' if failed else 'passed'}",
                measurements=(Measurement("net/pytorch/b1/t1", CHANGE_PCT, change, change - 2, change + 2, 30,
                                          verdict, 3.0),)))
            made["points"]["net/pytorch/b1/t1"] = made["points"].get("net/pytorch/b1/t1", 0) + 1
            made["ids"].append(gate_id)
    return made
