"""`torch-compile` (inductor, frozen weights, static shapes) in the suite: batch-1 latency at one thread for the
course's two models, compiled before any timing, the compile time recorded beside each case and never inside a
timing. Its parity on every model is in test_parity.py; ResNet-18 and MobileNet are timed by
`optcv how-fast --backends … torch-compile` (docs/log/how-fast-2026-11-30.md)."""

from __future__ import annotations

import pytest

from benchmarks.test_latency import time_single_images

pytestmark = pytest.mark.full  # timed cases: the full tier, alone on the machine

COMPILED_MODELS = ["tutorial", "tunable"]


@pytest.fixture(scope="module")
def compiled(model_sources):
    from optcv.runtime import make_predictor

    made = {m: make_predictor("torch-compile", model_sources[m], 1, batch_sizes=(1,)) for m in COMPILED_MODELS}
    yield made
    for predictor in made.values():
        predictor.close()


@pytest.mark.parametrize("model", COMPILED_MODELS)
def test_compiled_single_image_latency(benchmark, compiled, test_images, model):
    time_single_images(benchmark, compiled[model], test_images, model, f"{model}-torch-compile-t1")
    benchmark.extra_info["compile_seconds"] = compiled[model].describe()["compile_seconds"]
