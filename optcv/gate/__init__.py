"""The A/B gate: base and head timed side by side in one job, case by case, and judged.

config (what is timed), revisions and sides (what is compared), workers and worker (the processes that
time), timing (rounds, re-tests), verdict (the statistics and typed results), run (the one entry point),
pytest_ab (any pytest-benchmark test, gated), selftest and inject (the gate proving itself), ratio (the older
ratio gate, the fallback without a base).

The public face is below: `from optcv.gate import GateConfig, run_gate`. Its names load on first use, so that
importing one submodule (the pytest plugin does, in every session) does not import the whole gate.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "GateConfig": "optcv.gate.config",
    "Thresholds": "optcv.gate.verdict",
    "Verdict": "optcv.gate.verdict",
    "CaseFinding": "optcv.gate.verdict",
    "MeasureFinding": "optcv.gate.verdict",
    "GateResult": "optcv.gate.verdict",
    "run_gate": "optcv.gate.run",
    "SameCode": "optcv.gate.run",
    "GateOutcome": "optcv.gate.run",
    "RatioFallback": "optcv.gate.ratio",
    "run_self_test": "optcv.gate.selftest",
    "SelfTestResult": "optcv.gate.selftest",
    "GateSetupError": "optcv.errors",
    "PerformanceRegression": "optcv.errors",
}
__all__ = ["CaseFinding", "GateConfig", "GateOutcome", "GateResult", "GateSetupError", "MeasureFinding",
           "PerformanceRegression", "RatioFallback", "SameCode", "SelfTestResult", "Thresholds", "Verdict", "run_gate",
           "run_self_test"]

if TYPE_CHECKING:
    from optcv.errors import GateSetupError, PerformanceRegression
    from optcv.gate.config import GateConfig
    from optcv.gate.ratio import RatioFallback
    from optcv.gate.run import GateOutcome, SameCode, run_gate
    from optcv.gate.selftest import SelfTestResult, run_self_test
    from optcv.gate.verdict import CaseFinding, GateResult, MeasureFinding, Thresholds, Verdict


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'optcv.gate' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
