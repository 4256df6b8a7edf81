"""The cases `pytest --optcv` adds (optcv.plugin): collected from this file, parametrised from the plan.

Each model is built (exported, quantised; optcv's cache) once per session. A latency case times one call of the
backend's predict on the declared inputs with pytest-benchmark; a compiling backend compiles in the set-up.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from optcv.plugin import PLAN

INPUTS_PER_CASE = 16  # distinct inputs a latency case cycles through (at least one batch)
_SOURCES: dict[str, Any] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    plan = metafunc.config.stash[PLAN]
    if "parity_case" in metafunc.fixturenames:
        metafunc.parametrize("parity_case", plan.parity, ids=[f"{m}/{b}" for m, b in plan.parity])
    if "latency_case" in metafunc.fixturenames:
        metafunc.parametrize("latency_case", plan.latency, ids=[c.id for c in plan.latency])


def _source(config: pytest.Config, name: str) -> Any:
    from optcv.declared.origin import factory_outside_tree
    from optcv.runtime import declared_source

    model = config.stash[PLAN].models[name]
    if name not in _SOURCES:
        _SOURCES[name] = declared_source(model)
    if model.factory is not None and config.getoption("optcv_gate_side"):
        outside = factory_outside_tree(model.factory.split(":")[0], config.rootpath)
        if outside:
            pytest.fail(outside, pytrace=False)
    return _SOURCES[name]


def test_optcv_parity(request: pytest.FixtureRequest, parity_case: tuple[str, str]) -> None:
    from optcv.measure.declared import check_declared
    from optcv.report.parity import declared_parity_text

    plan = request.config.stash[PLAN]
    name, backend = parity_case
    model = plan.models[name]
    checked = check_declared(model, _source(request.config, name), (model.reference_backend, backend))
    assert not checked.failed, declared_parity_text(checked)


def test_optcv_latency(request: pytest.FixtureRequest, benchmark: Any, latency_case: Any) -> None:
    from optcv.declared.inputs import sample_inputs
    from optcv.runtime import make_predictor

    plan = request.config.stash[PLAN]
    model = plan.models[latency_case.model]
    batch = latency_case.batch
    options = {"batch_sizes": (batch,)} if latency_case.backend == "torch-compile" else {}
    predictor = make_predictor(latency_case.backend, _source(request.config, model.name), latency_case.threads,
                               **options)
    try:
        count = max(1, INPUTS_PER_CASE // batch) * batch
        inputs = sample_inputs(model.input, count)
        batches = [inputs[i:i + batch] for i in range(0, count, batch)]
        for x in batches:  # warm-up: first calls allocate and pick kernels
            predictor.predict(x)
        cycle = itertools.cycle(batches)
        benchmark.group = f"optcv {model.name}"
        benchmark.extra_info.update({"optcv_case": latency_case.id, "images_per_call": batch,
                                     "settings": predictor.describe()})
        benchmark(lambda: predictor.predict(next(cycle)))
    finally:
        predictor.close()
