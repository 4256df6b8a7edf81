"""`torch-compile` (inductor, frozen weights, static shapes) in the suite: parity with PyTorch on the full test
split and batch-1 latency at one thread, with the compile time recorded beside each case and never inside a
timing. Compiling costs seconds to minutes per batch size, so the suite compiles the models in
`COMPILED_MODELS` at the two batch sizes these cases use; `optcv how-fast --backends torch-compile` times the
rest (see the README's "How fast, and why")."""

from __future__ import annotations

import pytest

from benchmarks.conftest import REFERENCE_BACKEND
from benchmarks.test_latency import time_single_images
from optcv.errors import ParityFailure
from optcv.evaluate import evaluate_backends, parity
from optcv.report import parity_line

COMPILED_MODELS = ["tutorial", "tunable"]
PARITY_BATCH = 250  # divides the 10,000 test images: one compiled shape for the whole pass


@pytest.fixture(scope="module")
def compiled(model_sources):
    from optcv.runtime import make_predictor

    made = {m: make_predictor("torch-compile", model_sources[m], 1, batch_sizes=(1, PARITY_BATCH))
            for m in COMPILED_MODELS}
    yield made
    for predictor in made.values():
        predictor.close()


@pytest.mark.parametrize("model", COMPILED_MODELS)
def test_compiled_parity_on_every_test_image(request, compiled, plain_predictor, cifar, model):
    evaluation = evaluate_backends([plain_predictor(model, REFERENCE_BACKEND), compiled[model]], cifar.test,
                                   batch_size=PARITY_BATCH)
    verdict = parity(evaluation, "torch-compile")
    request.config._optcv_gate_lines.append(f"{model}: {parity_line(verdict)}")
    if not verdict.passed:
        raise ParityFailure(f"{parity_line(verdict)} ({model})")
    assert set(compiled[model].compile_seconds) == {1, PARITY_BATCH}  # no shape compiled inside the pass


@pytest.mark.parametrize("model", COMPILED_MODELS)
def test_compiled_single_image_latency(benchmark, compiled, test_images, model):
    time_single_images(benchmark, compiled[model], test_images, model, f"{model}-torch-compile-t1")
    benchmark.extra_info["compile_seconds"] = compiled[model].describe()["compile_seconds"]
