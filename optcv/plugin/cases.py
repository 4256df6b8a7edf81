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
    if "gate_against" in metafunc.fixturenames:
        revisions = [plan.gate_against] if plan.gate_against else []
        metafunc.parametrize("gate_against", revisions, ids=[f"against-{r}" for r in revisions])


def _source(plan: Any, name: str) -> Any:
    from optcv.runtime import declared_source

    if name not in _SOURCES:
        _SOURCES[name] = declared_source(plan.models[name])
    return _SOURCES[name]


def test_optcv_parity(request: pytest.FixtureRequest, parity_case: tuple[str, str]) -> None:
    from optcv.measure.declared import check_declared
    from optcv.report.parity import declared_parity_text

    plan = request.config.stash[PLAN]
    name, backend = parity_case
    model = plan.models[name]
    checked = check_declared(model, _source(plan, name), (model.reference_backend, backend))
    assert not checked.failed, declared_parity_text(checked)


def test_optcv_latency(request: pytest.FixtureRequest, benchmark: Any, latency_case: Any) -> None:
    from optcv.declared.inputs import sample_inputs
    from optcv.runtime import make_predictor

    plan = request.config.stash[PLAN]
    model = plan.models[latency_case.model]
    batch = latency_case.batch
    options = {"batch_sizes": (batch,)} if latency_case.backend == "torch-compile" else {}
    predictor = make_predictor(latency_case.backend, _source(plan, model.name), latency_case.threads, **options)
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


def test_optcv_gate(request: pytest.FixtureRequest, gate_against: str) -> None:
    from optcv._io import write_json
    from optcv.gate.config import GateConfig
    from optcv.gate.revisions import declaring_repository
    from optcv.gate.run import run_gate
    from optcv.gate.verdict import Thresholds
    from optcv.report.gate import outcome_failure_lines, outcome_markdown

    plan = request.config.stash[PLAN]
    repo, declarations = declaring_repository(plan.declarations)
    cases = {"cases": plan.gate_cases} if plan.gate_cases else {}
    config = GateConfig(models=tuple(plan.models), declarations=declarations, **cases)
    outcome = run_gate(config, Thresholds(), against=gate_against, head_tree=repo, repo=repo)
    markdown = outcome_markdown(outcome)
    request.node.user_properties.append(("optcv_gate", markdown))
    print(markdown)
    if request.config.getoption("optcv_gate_json"):
        write_json(request.config.getoption("optcv_gate_json"), outcome.to_dict())
    if outcome.failures:
        pytest.fail("\n".join([*outcome_failure_lines(outcome), "", markdown]), pytrace=False)
