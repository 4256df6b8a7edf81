"""The gate CI trusts: speed-up ratios measured interleaved in this run, against committed ratios.

Absolute times move 20-50 % between runs of unchanged code on shared machines; the ratio of two backends
timed A B A B … in one process moves by a few percent, so a 10 % fall is a real regression.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.conftest import BACKENDS, MODEL_NAMES, REFERENCE_BACKEND
from optcv.bench import BaselineError, BenchConfig, load_json, ratio_gate, ratios_of, run_bench
from optcv.runtime import make_predictor

# The gate times fixed settings, one thread per backend: a calibrated choice can flip between runs when two
# settings are close (seen here: the tutorial speed-up jumped from 4.2x to 5.8x when PyTorch's thread
# count flipped), which would move the ratio for reasons other than the code. One thread is also the
# quietest setting on a shared 2-core machine.
GATE_THREADS = 1


def gate_predictor(model_sources, model: str, backend: str):
    return make_predictor(backend, model_sources[model], GATE_THREADS)


def gate_config(request: pytest.FixtureRequest) -> BenchConfig:
    n = request.config.getoption("gate_images")
    return BenchConfig(n_single=n, chunk=max(1, n // 20), warmup=200, batch_sizes=(), calibration_calls=300)


def load_baseline(request: pytest.FixtureRequest) -> dict:
    path = request.config.getoption("ratio_baseline")
    try:
        return load_json(path, "ratio baseline")
    except BaselineError as exc:
        pytest.fail(f"BASELINE MISSING: {exc}; create it with `pytest benchmarks -k gate --ratio-save` "
                    "and commit it", pytrace=False)


def check(findings) -> None:
    failed = [f for f in findings if not f.passed]
    if failed:
        pytest.fail("\n".join(f.message() for f in findings), pytrace=False)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_speedup_ratio_gate(request, model_sources, test_images, model):
    backends = {name: [gate_predictor(model_sources, model, name)] for name in BACKENDS}
    result = run_bench(backends, test_images, gate_config(request), model=model, reference=REFERENCE_BACKEND)
    as_dict = result.to_dict()
    request.config._optcv_ratio_results.append(as_dict)
    for ratio in result.ratios:
        assert ratio.ci_low <= ratio.ratio <= ratio.ci_high
    if not request.config.getoption("ratio_gate"):
        return  # measured and reported in the summary; --ratio-gate turns it into a gate
    baseline = load_baseline(request)
    try:
        expected = {k: v for k, v in ratios_of(baseline).items() if k.startswith(f"{model}:")}
    except BaselineError as exc:
        pytest.fail(f"BASELINE INVALID: {exc}", pytrace=False)
    if not expected:
        pytest.fail(f"BASELINE MISSING: {request.config.getoption('ratio_baseline')} has no ratios for "
                    f"{model}; refresh it with --ratio-save", pytrace=False)
    check(ratio_gate(ratios_of(as_dict), {**baseline, "ratios": expected}, request.config.getoption("ratio_margin")))


class SlowedPredictor:
    """Test-only hook: the wrapped backend plus a busy-wait per call, a real slowdown the gate must see."""

    def __init__(self, predictor, delay_us: float):
        self.predictor, self.delay_ns = predictor, int(delay_us * 1000)
        self.name, self.classes = predictor.name, predictor.classes

    def predict(self, images: np.ndarray) -> np.ndarray:
        logits = self.predictor.predict(images)
        end = time.perf_counter_ns() + self.delay_ns
        while time.perf_counter_ns() < end:
            pass
        return logits

    def describe(self) -> dict:
        return {**self.predictor.describe(), "injected_delay_us": self.delay_ns / 1000}


@pytest.mark.parametrize("model", MODEL_NAMES[:1])
def test_gate_fails_on_an_injected_slowdown(request, model_sources, test_images, model):
    """Slow ONNX Runtime down by half its own latency: the gate must fail, naming the backend."""
    fast = gate_predictor(model_sources, model, "onnxruntime")
    reference = gate_predictor(model_sources, model, REFERENCE_BACKEND)
    config = gate_config(request)
    unchanged = run_bench({REFERENCE_BACKEND: [reference], "onnxruntime": [fast]}, test_images, config, model=model)
    delay = unchanged.backends["onnxruntime"].latency.median_us * 0.5
    slowed = run_bench({REFERENCE_BACKEND: [reference], "onnxruntime": [SlowedPredictor(fast, delay)]},
                       test_images, config, model=model)
    # Judge both against the committed baseline when there is one, else against this run's own ratio.
    try:
        baseline = load_json(request.config.getoption("ratio_baseline"), "ratio baseline")
        expected = {k: v for k, v in ratios_of(baseline).items() if k == f"{model}:{REFERENCE_BACKEND}/onnxruntime"}
        baseline = {**baseline, "ratios": expected} if expected else make_self_baseline(unchanged)
    except BaselineError:
        baseline = make_self_baseline(unchanged)
    margin = request.config.getoption("ratio_margin")
    findings = ratio_gate(ratios_of(slowed.to_dict()), baseline, margin)
    assert [f.passed for f in findings] == [False], "\n".join(f.message() for f in findings)
    assert "SPEED REGRESSION" in findings[0].message() and "onnxruntime" in findings[0].message()


def make_self_baseline(result) -> dict:
    from optcv.bench import make_baseline

    return make_baseline([result.to_dict()])
