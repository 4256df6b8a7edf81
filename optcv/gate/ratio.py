"""The ratio gate: PyTorch ÷ ONNX Runtime speed-ups measured interleaved in one run against committed ratios.

The older gate, and the fallback where there is no base revision to time against (a first commit, a shallow
clone), only when asked for (`--allow-no-base`): it sees a slower ONNX Runtime, not a slower PyTorch or shared
path. The baseline file keeps one set of ratios per machine (CPU model, ISA flags, cores); a machine with none
recorded is an error, never a pass.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optcv._io import work_folder
from optcv.backends.base import all_closed
from optcv.data import default_cache_dir
from optcv.env import environment_info, fingerprint_differences, machine_fingerprint, same_machine
from optcv.errors import BaselineInvalid, BaselineMissing, BaselineOtherMachine, OptcvError, SpeedRegression
from optcv.gate.compare import Log, prepare_inputs
from optcv.gate.config import MODELS, build_recipes
from optcv.gate.sides import HEAD_TREE, Side
from optcv.gate.worker.protocol import ReferenceModel
from optcv.gate.workers import build_artifacts
from optcv.measure.latency import RESULT_SCHEMA, BenchConfig, run_bench
from optcv.runtime import ModelSource, make_predictor

BASELINE_SCHEMA = "optcv-ratio-baseline/2"  # one entry per machine
LEGACY_BASELINE_SCHEMA = "optcv-ratio-baseline/1"  # one machine, its ISA flags not recorded
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


def load_json(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object, or a typed error naming the file and `fix` (how to make a good one)."""
    path = Path(path)
    if not path.is_file():
        raise BaselineMissing(f"{what} {path} does not exist; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineInvalid(f"{what} {path} is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise BaselineInvalid(f"{what} {path} is not a JSON object; {fix}")
    return data


RECORD_BASELINE = "record this machine's ratios with `pytest benchmarks -k ratio_gate --ratio-save`"
WRITE_RESULTS = "write one with `optcv bench MODEL --json RESULTS.json`"


def ratios_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ratios of an `optcv bench` result, keyed 'model:reference/backend'."""
    if result.get("schema") != RESULT_SCHEMA:
        raise BaselineInvalid(f"unknown schema {result.get('schema')!r}: expected an `optcv bench --json` file "
                              f"({RESULT_SCHEMA})")
    if not isinstance(result.get("ratios"), dict):
        raise BaselineInvalid(f"a {RESULT_SCHEMA} file needs a 'ratios' object; write it again with optcv bench")
    return {f"{result.get('model') or 'model'}:{k}": v for k, v in result["ratios"].items()}


def machine_entries(baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Each machine's recorded ratios in a baseline file, as {fingerprint, environment, ratios}. A file of the
    first schema is one entry whose fingerprint was not recorded, so it matches no machine."""
    schema = baseline.get("schema")
    if schema == LEGACY_BASELINE_SCHEMA:
        entries = [{"fingerprint": {}, "environment": baseline.get("environment", {}),
                    "ratios": baseline.get("ratios")}]
    elif schema == BASELINE_SCHEMA and isinstance(baseline.get("machines"), list):
        entries = baseline["machines"]
    else:
        raise BaselineInvalid(f"unknown schema {schema!r}: expected {BASELINE_SCHEMA} with a 'machines' list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("ratios"), dict):
            raise BaselineInvalid("every machine of a ratio baseline needs a 'ratios' object; record it again "
                                  "with `pytest benchmarks -k ratio_gate --ratio-save`")
    return entries


def _differences(entry: dict[str, Any], fingerprint: dict[str, Any]) -> list[str]:
    return fingerprint_differences({**entry.get("environment", {}), "fingerprint": entry.get("fingerprint", {})},
                                   fingerprint)


def _machine_name(fingerprint: dict[str, Any]) -> str:
    isa = fingerprint.get("isa")
    flags = "/".join(isa) if isinstance(isa, list) else "ISA flags not recorded"
    return f"{fingerprint.get('cpu', '?')}, {fingerprint.get('cpu_count', '?')} cores, {flags}"


def baseline_for(baseline: dict[str, Any], fingerprint: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The ratios recorded on this machine (same CPU model, ISA flags and core count) and how the software
    differs from that recording. Ratios from another CPU are not a standard to hold this one to, so none
    recorded here is an error naming the fix, never a pass."""
    entries = machine_entries(baseline)
    for entry in entries:
        differences = _differences(entry, fingerprint)
        if same_machine(differences):
            return entry["ratios"], differences
    held = "; ".join(_machine_name({**e.get("environment", {}), **e.get("fingerprint", {})}) for e in entries)
    raise BaselineOtherMachine(f"the ratio baseline holds no speed-ups recorded on this machine "
                               f"({_machine_name(fingerprint)}; it holds {held or 'none'}): record them here with "
                               "`pytest benchmarks -k ratio_gate --ratio-save` and commit the file")


def recorded_ratios(baseline_path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """The ratios the baseline file holds for this machine, and how its software differs from the recording."""
    return baseline_for(load_json(baseline_path, "ratio baseline", RECORD_BASELINE), machine_fingerprint())


def make_baseline(results: Sequence[dict[str, Any]], existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """A baseline file with this machine's ratios from `results`, beside the other machines of `existing`."""
    fingerprint = machine_fingerprint()
    ratios: dict[str, Any] = {}
    for result in results:
        ratios.update({k: {"ratio": v["ratio"], "ci_low": v["ci_low"], "ci_high": v["ci_high"]}
                       for k, v in ratios_of(result).items()})
    others = [e for e in machine_entries(existing) if not same_machine(_differences(e, fingerprint))
              and e.get("fingerprint")] if existing else []
    entry = {"fingerprint": fingerprint, "environment": environment_info(), "ratios": ratios}
    return {"schema": BASELINE_SCHEMA, "machines": [*others, entry]}


def ratio_gate(measured: dict[str, dict[str, Any]], recorded: dict[str, Any],
               margin: float = DEFAULT_MARGIN) -> list[GateFinding]:
    """One finding per recorded ratio (`baseline_for`'s, this machine's); a finding fails when even its CI's
    upper end is below (1 - margin) × the recorded ratio."""
    if not 0 <= margin < 1:
        raise OptcvError(f"margin must be in [0, 1), got {margin}")
    # Only the models this run measured are gated; a model absent from the run is not a failure.
    measured_models = {key.split(":", 1)[0] for key in measured}
    expected = {k: v for k, v in recorded.items() if k.split(":", 1)[0] in measured_models}
    if not expected:
        held = sorted({key.split(":", 1)[0] for key in recorded})
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
    findings: list[GateFinding]
    software_differences: list[str]  # the same machine, other versions: reported beside the verdict
    baseline: str

    @property
    def regressions(self) -> list[GateFinding]:
        return [f for f in self.findings if not f.passed]

    @property
    def failures(self) -> list[Any]:
        return list(self.regressions)

    def raise_for_regressions(self) -> None:
        if self.regressions:
            raise SpeedRegression("; ".join(f.message() for f in self.regressions))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": FALLBACK_SCHEMA, "reason": self.reason, "baseline": self.baseline,
                "software_differences": self.software_differences, "findings": [vars(f) for f in self.findings]}


def run_ratio_fallback(reason: str, baseline_path: str | Path, *, models: Sequence[str] = MODELS,
                       data_dir: str | Path | None = None, calls: int = RATIO_CALLS, log: Log = lambda _m: None
                       ) -> RatioFallback:
    """Speed-ups over PyTorch of each backend the baseline holds, at one thread, interleaved in this run, against
    the ratios recorded on this machine (BaselineOtherMachine when there are none)."""
    recorded, differences = recorded_ratios(baseline_path)
    # The backends the baseline holds per model, reference first (keys 'model:pytorch/backend').
    backends: dict[str, list[str]] = {}
    for key in recorded:
        model, pair = key.split(":", 1)
        if model in models:
            backends[model] = list(dict.fromkeys([*backends.get(model, []), *pair.split("/")]))
    if not backends:
        raise BaselineMissing(f"the ratio baseline holds no speed-ups for {', '.join(models)}; record them with "
                              "`pytest benchmarks -k ratio_gate --ratio-save`")
    recipes = build_recipes(list(backends), {m for m, names in backends.items() if "onnxruntime-int8" in names})
    head = Side("head", sys.executable, HEAD_TREE)
    with work_folder("optcv-ratio-") as tmp:
        inputs, root = prepare_inputs(Path(tmp), data_dir)
        built = build_artifacts(head, Path(tmp), recipes, root, default_cache_dir())
        images = np.load(inputs["predict_images"])
    measured: dict[str, dict[str, Any]] = {}
    config = ratio_bench_config(calls)
    for model, paths in built.models.items():
        assert isinstance(paths, ReferenceModel)  # the ratio gate times optcv's reference models only
        source = ModelSource(Path(paths.checkpoint), Path(paths.onnx))
        with all_closed([make_predictor(b, source, RATIO_THREADS) for b in backends[model]]) as predictors:
            log(f"ratio fallback: timing {model}")
            timed = run_bench({p.name: [p] for p in predictors}, images, config, model=model)
        measured.update(ratios_of(timed.to_dict()))
    return RatioFallback(reason, ratio_gate(measured, recorded), differences, str(baseline_path))
