"""The ratio gate: PyTorch ÷ ONNX Runtime speed-ups measured interleaved in one run against committed ratios.

The older gate, and the fallback where there is no base revision to time against (a first commit, a shallow
clone): it sees a slower ONNX Runtime, not a slower PyTorch or shared path, and a baseline from another CPU is
reported, never enforced.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optcv.data import default_cache_dir
from optcv.env import environment_info, fingerprint_differences, machine_fingerprint, same_machine
from optcv.errors import BaselineInvalid, BaselineMissing, OptcvError, SpeedRegression
from optcv.gate.config import BACKENDS, MODELS
from optcv.gate.sides import HEAD_TREE, Side
from optcv.gate.timing import Log, prepare_inputs
from optcv.gate.workers import build_artifacts
from optcv.measure.latency import RESULT_SCHEMA, BenchConfig, run_bench
from optcv.runtime import ModelSource, make_predictor

BASELINE_SCHEMA = "optcv-ratio-baseline/1"
FALLBACK_SCHEMA = "optcv-ratio-fallback/1"
DEFAULT_BASELINE = HEAD_TREE / "benchmarks" / "baselines" / "ratios.json"
RATIO_CALLS = 4000  # single-image predictions per backend for the paired ratios
# Fixed settings, one thread per backend: a calibrated choice can flip between runs when two settings are close
# (the tutorial speed-up jumped from 4.2x to 5.8x when PyTorch's thread count flipped).
RATIO_THREADS = 1


def ratio_bench_config(calls: int = RATIO_CALLS) -> BenchConfig:
    """How the ratio gate times: `calls` single-image predictions per backend in 20 interleaved chunks."""
    return BenchConfig(n_single=calls, chunk=max(1, calls // 20), batch_sizes=())



DEFAULT_MARGIN = 0.10


@dataclass(frozen=True)
class GateFinding:
    key: str
    baseline: float
    measured: float
    ci_low: float
    ci_high: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.ci_high >= self.threshold

    def message(self) -> str:
        verdict = "ok" if self.passed else "SPEED REGRESSION"
        return (f"{verdict}: {self.key} speed-up {self.measured:.2f}× (95% CI {self.ci_low:.2f}–{self.ci_high:.2f}) "
                f"vs baseline {self.baseline:.2f}×; fails below {self.threshold:.2f}×")


def load_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BaselineMissing(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineInvalid(f"{what} {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BaselineInvalid(f"{what} {path} is not a JSON object")
    return data


def ratios_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ratios of a bench result or a baseline file, keyed 'model:reference/backend'."""
    if result.get("schema") in (BASELINE_SCHEMA, RESULT_SCHEMA) and not isinstance(result.get("ratios"), dict):
        raise BaselineInvalid(f"a {result['schema']} file needs a 'ratios' object; refresh the file")
    if result.get("schema") == BASELINE_SCHEMA:
        return dict(result["ratios"])
    if result.get("schema") == RESULT_SCHEMA:
        return {f"{result.get('model') or 'model'}:{k}": v for k, v in result["ratios"].items()}
    raise BaselineInvalid(f"unknown schema {result.get('schema')!r}: expected {RESULT_SCHEMA} or {BASELINE_SCHEMA}")


def make_baseline(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for result in results:
        ratios.update({k: {"ratio": v["ratio"], "ci_low": v["ci_low"], "ci_high": v["ci_high"]}
                       for k, v in ratios_of(result).items()})
    return {"schema": BASELINE_SCHEMA, "environment": {**environment_info(), "fingerprint": machine_fingerprint()},
            "ratios": ratios}


def ratio_gate(measured: dict[str, dict[str, Any]], baseline: dict[str, Any],
               margin: float = DEFAULT_MARGIN) -> list[GateFinding]:
    """One finding per baseline ratio; a finding fails when even its CI's upper end is below
    (1 - margin) × the baseline ratio."""
    if not 0 <= margin < 1:
        raise OptcvError(f"margin must be in [0, 1), got {margin}")
    # Only the models this run measured are gated; a model absent from the run is not a failure.
    measured_models = {key.split(":", 1)[0] for key in measured}
    expected = {k: v for k, v in ratios_of(baseline).items() if k.split(":", 1)[0] in measured_models}
    if not expected:
        held = sorted({key.split(":", 1)[0] for key in ratios_of(baseline)})
        raise BaselineMissing(f"the baseline holds no ratios for {', '.join(sorted(measured_models))} "
                            f"(it has {', '.join(held) or 'none'}); name the model the same or refresh the baseline")
    missing = sorted(set(expected) - set(measured))
    if missing:
        raise BaselineMissing(f"the run did not measure {', '.join(missing)}, which the baseline holds; "
                            "time the same backends, or refresh the baseline")
    findings = []
    for key, base in expected.items():
        m = measured[key]
        try:
            findings.append(GateFinding(key, float(base["ratio"]), float(m["ratio"]), float(m["ci_low"]),
                                        float(m["ci_high"]), float(base["ratio"]) * (1 - margin)))
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineInvalid(f"{key}: a ratio entry lacks a numeric {exc}; refresh the file") from None
    return findings




@dataclass
class RatioFallback:
    reason: str  # why there was no second side
    findings: list[Any]  # bench.GateFinding
    machine_differences: list[str]
    baseline: str
    comparable: bool = True  # False: the baseline comes from another CPU; reported, never enforced

    @property
    def regressions(self) -> list[Any]:
        return [f for f in self.findings if not f.passed] if self.comparable else []

    def raise_for_regressions(self) -> None:
        if self.regressions:
            raise SpeedRegression("; ".join(f.message() for f in self.regressions))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": FALLBACK_SCHEMA, "reason": self.reason, "baseline": self.baseline,
                "comparable": self.comparable, "machine_differences": self.machine_differences,
                "findings": [vars(f) for f in self.findings]}


def run_ratio_fallback(reason: str, baseline_path: str | Path, *, models: Sequence[str] = MODELS,
                       data_dir: str | Path | None = None, calls: int = RATIO_CALLS, log: Log = lambda _m: None
                       ) -> RatioFallback:
    """PyTorch ÷ ONNX Runtime speed-ups at one thread, interleaved in this run, against committed ratios."""
    baseline = load_json(baseline_path, "ratio baseline")
    differences = fingerprint_differences(baseline.get("environment", {}), machine_fingerprint())
    head = Side("head", sys.executable, HEAD_TREE)
    with tempfile.TemporaryDirectory(prefix="optcv-gate-") as tmp:
        inputs, root = prepare_inputs(Path(tmp), data_dir)
        built = build_artifacts(head, Path(tmp), models, root, default_cache_dir())
        images = np.load(inputs["predict_images"])
    measured: dict[str, dict[str, Any]] = {}
    config = ratio_bench_config(calls)
    for model, paths in built["models"].items():
        source = ModelSource(Path(paths["checkpoint"]), Path(paths["onnx"]))
        backends = {b: [make_predictor(b, source, RATIO_THREADS)] for b in BACKENDS}
        log(f"ratio fallback: timing {model}")
        measured.update(ratios_of(run_bench(backends, images, config, model=model).to_dict()))
    return RatioFallback(reason, ratio_gate(measured, baseline), differences, str(baseline_path),
                         comparable=same_machine(differences))
