"""Per-image latency (the course's metric) and batched throughput, for every backend and model.

Inputs are real test images, cycled so no case times a cached result. Every backend is timed at the same
explicit thread counts (1 and all cores), with identical warm-up and rounds; within a thread count each
backend uses the option a short calibration found fastest (oneDNN on or off for PyTorch), as `optcv bench`
does, so PyTorch is measured at its best.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.conftest import BACKENDS, BATCHED_BACKENDS, BATCHED_CASES, MODEL_NAMES, THREAD_COUNTS
from optcv.env import package_versions
from optcv.measure.latency import scaled_rounds, seconds_per_call

pytestmark = pytest.mark.full  # timed cases: the full tier, alone on the machine

ROUNDS, ITERATIONS, WARMUP_ROUNDS = 100, 20, 5
BATCHED_ROUNDS = 10
# Timed seconds per case at most: the small models keep their full rounds, ResNet-18 gets fewer.
LATENCY_BUDGET_S, BATCHED_BUDGET_S = 2.0, 4.0


def record(benchmark, predictor, batch_size: int) -> None:
    settings = predictor.describe()
    benchmark.extra_info.update({
        "backend": settings["backend"], "batch_size": batch_size, "threads": settings.get("threads"),
        "settings": settings, "torch": package_versions()["torch"],
        "onnxruntime": package_versions()["onnxruntime"],
    })
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["us_per_image"] = median * 1e6 / batch_size
        benchmark.extra_info["images_per_s"] = batch_size / median


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", THREAD_COUNTS)
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_single_image_latency(benchmark, best_predictor, test_images, model, threads, backend):
    time_single_images(benchmark, best_predictor(model, backend, 1, threads), test_images, model,
                       f"{model}-{backend}-t{threads}")


def time_single_images(benchmark, predictor, test_images, model: str, name: str) -> None:
    """One image per call, cycling through the test split, rounds scaled to the model's cost."""
    singles = itertools.cycle([test_images[i:i + 1] for i in range(len(test_images))])
    benchmark.group = f"latency {model} (batch 1)"
    benchmark.name = name
    call = lambda: predictor.predict(next(singles))  # noqa: E731
    rounds, iterations = scaled_rounds(seconds_per_call(call), ROUNDS, ITERATIONS, LATENCY_BUDGET_S)
    logits = benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=WARMUP_ROUNDS)
    assert logits.shape == (1, 10)
    record(benchmark, predictor, 1)


@pytest.mark.parametrize("backend", BATCHED_BACKENDS)
@pytest.mark.parametrize("threads", THREAD_COUNTS)
@pytest.mark.parametrize("model, batch_size", BATCHED_CASES)
def test_batched_throughput(benchmark, best_predictor, test_images, model, batch_size, threads, backend):
    predictor = best_predictor(model, backend, batch_size, threads)
    batches = itertools.cycle([test_images[i:i + batch_size]
                               for i in range(0, len(test_images) - batch_size + 1, batch_size)])
    benchmark.group = f"throughput {model} (batch {batch_size})"
    benchmark.name = f"{model}-{backend}-b{batch_size}-t{threads}"
    call = lambda: predictor.predict(next(batches))  # noqa: E731
    rounds, _ = scaled_rounds(seconds_per_call(call, calls=1), BATCHED_ROUNDS, 1, BATCHED_BUDGET_S)
    logits = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
    assert logits.shape == (batch_size, 10) and np.isfinite(logits).all()
    record(benchmark, predictor, batch_size)
