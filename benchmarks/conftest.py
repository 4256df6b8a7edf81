"""The benchmark suite's set-up: reference models built once, calibrated predictors, the ratio gate.

Options (docs/reference/benchmark-suite.md): --ratio-gate fails on a speed regression against
benchmarks/baselines/ratios.json, --ratio-save writes that baseline from this run, --gate-images sets how many
single-image predictions per backend the paired ratios use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import full_tier, skip_or_fail
from optcv.backends.base import Predictor
from optcv.data import CIFAR10, default_cache_dir, load_cifar10
from optcv.env import cpu_model, isa_flags, package_versions
from optcv.env import usable_cores as default_threads
from optcv.gate.ratio import DEFAULT_MARGIN, RATIO_CALLS, RECORD_BASELINE, load_json, make_baseline
from optcv.measure.case import PREDICT_IMAGES, CaseId, TimedCase
from optcv.measure.reference import COURSE_MODELS, REFERENCE_MODELS, build_reference
from optcv.runtime import DEFAULT_BACKENDS, NON_COMPILING_BACKENDS, ModelSource, backend_unavailable, make_predictor

HERE = Path(__file__).resolve().parent
RATIO_BASELINE = HERE / "baselines" / "ratios.json"
GATE_THRESHOLDS = HERE / "gate_thresholds.json"
REFERENCE_BACKEND = DEFAULT_BACKENDS[0]

MODEL_NAMES = list(REFERENCE_MODELS)
# The course's two nets in both tiers; the torchvision ones, which take minutes to build and time, in the full one.
MODEL_PARAMS = [pytest.param(name, marks=() if name in COURSE_MODELS else pytest.mark.full) for name in MODEL_NAMES]
BACKENDS = list(NON_COMPILING_BACKENDS)  # torch-compile compiles each shape for seconds: its own cases
# Every backend is timed at the same, explicit thread counts: one, and every core of this machine.
THREAD_COUNTS = sorted({1, default_threads()})


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("optcv", "optcv benchmark suite")
    group.addoption("--ratio-gate", action="store_true",
                    help="fail when a backend's speed-up falls below the ratios recorded for this machine in the "
                         "baseline (none recorded for this machine: a failure)")
    group.addoption("--ratio-save", action="store_true",
                    help=f"record this run's speed-ups for this machine in {RATIO_BASELINE} (other machines kept)")
    group.addoption("--ratio-baseline", default=str(RATIO_BASELINE), help="the ratio baseline file")
    group.addoption("--ratio-margin", type=float, default=DEFAULT_MARGIN,
                    help=f"allowed fall of a speed-up below its baseline (fraction, default {DEFAULT_MARGIN:g})")
    group.addoption("--gate-images", type=int, default=RATIO_CALLS,
                    help=f"single-image predictions per backend for the paired ratios (default {RATIO_CALLS})")
    group.addoption("--training-images", type=int, default=10_000,
                    help="training images per timed epoch in the training-speed cases (default 10,000)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest-benchmark reads its storage in its own pytest_configure: point it at the committed
    # baselines so `pytest benchmarks --benchmark-compare` works from a fresh clone, from any folder.
    # This suite's timed cases are A/B-gated against the base revision unless the command line says otherwise
    # (--gate-against none: timed by pytest-benchmark alone); an xdist run never gates.
    if config.getoption("gate_against", None) is None and not getattr(config.option, "numprocesses", None):
        config.option.gate_against = "default"
    if config.getoption("benchmark_storage", None) == "file://./.benchmarks":
        config.option.benchmark_storage = f"file://{HERE / 'baselines'}"
    config._optcv_ratio_results = []  # type: ignore[attr-defined]
    config._optcv_gate_lines = []  # type: ignore[attr-defined]
    config.addinivalue_line("markers", "gate_change: in the pull-request tier, runs only when the code under "
                                       f"{', '.join(GATE_CODE)} changed since the gate's base revision")
    config.addinivalue_line("markers", "ratio: runs only with --ratio-gate or --ratio-save")
    config._optcv_baseline = _choose_baseline(config)  # type: ignore[attr-defined]


# The gate's boundary tests (its self-test, the pytest gate's) run in the pull-request tier when the code that decides
# a verdict changed.
GATE_CODE = ("optcv/gate", "optcv/plugin", "optcv/backends", "optcv/measure")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ratio cases only when asked for (--ratio-gate, --ratio-save). In the pull-request tier, the cases marked
    `gate_change` only when the gate's, the backends' or the measurements' code changed since the gate's base, said
    either way."""
    if not (config.getoption("ratio_gate") or config.getoption("ratio_save")):
        ratio = [item for item in items if item.get_closest_marker("ratio")]
        if ratio:
            config.hook.pytest_deselected(items=ratio)
            items[:] = [item for item in items if not item.get_closest_marker("ratio")]
    marked = [item for item in items if item.get_closest_marker("gate_change")]
    if not marked or full_tier(config):
        return
    changed, base = gate_code_changes(config)
    if changed == []:
        config.hook.pytest_deselected(items=marked)
        items[:] = [item for item in items if not item.get_closest_marker("gate_change")]
        config._optcv_gate_lines.append(f"the gate's boundary tests left out: nothing under {', '.join(GATE_CODE)} "
                                        f"changed since {base} (the nightly tier always runs them)")
    else:
        why = (f"{len(changed)} file(s) under {', '.join(GATE_CODE)} changed since {base}, e.g. {changed[0]}"
               if changed else f"the base revision {base} is not here, so every change counts")
        config._optcv_gate_lines.append(f"the gate's boundary tests run: {why}")


def gate_code_changes(config: pytest.Config) -> tuple[list[str] | None, str]:
    """(the files of GATE_CODE changed since the gate's base revision, or None where it is not in the history;
    the base)."""
    from optcv.gate.revisions import changed_since, default_base_revision, repo_root

    repo = repo_root(HERE.parent)
    against = config.getoption("gate_against") or "default"
    if repo is None:
        return None, "(no git repository)"
    base = default_base_revision(repo) if against in ("default", "none") else against
    return changed_since(repo, base, GATE_CODE), base


def _choose_baseline(config: pytest.Config) -> tuple[str, bool] | None:
    """With a bare --benchmark-compare, compare with this machine's baseline (optcv history baseline); without one,
    pytest-benchmark's latest file, said loudly with the machine it was recorded on. (line, loud) or None."""
    if config.getoption("benchmark_compare", None) is not True:
        return None
    from optcv.history.baseline import find_baseline
    from optcv.history.ingest import this_machine

    storage = Path(str(config.option.benchmark_storage).removeprefix("file://"))
    machine = this_machine()
    found = find_baseline(storage, machine)
    if found is not None:
        config.option.benchmark_compare = f"{found.parent.name}/{found.stem}"  # pytest-benchmark's 'platform/name' glob
        return f"benchmark compare: the baseline of this machine, {machine.label()}: {found.name}", False
    files = sorted(storage.glob("*/[0-9][0-9][0-9][0-9]_*.json"))
    if not files:
        return f"NO BASELINE: nothing to compare with in {storage}", True
    other = json.loads(files[-1].read_text(encoding="utf-8")).get("machine_info", {})
    isa = " ".join(other.get("isa", [])) or "ISA flags not recorded"
    return (f"NO BASELINE FOR THIS MACHINE ({machine.label()}, key {machine.key}): compared with {files[-1].name}, "
            f"recorded on {other.get('cpu')} ({other.get('cpu_count')} cores; {isa}), so every difference is the "
            "hardware's as much as the code's; record this machine's: pytest benchmarks --benchmark-json F, "
            "optcv history import F, optcv history baseline"), True


def pytest_report_header(config: pytest.Config) -> list[str]:
    chosen = getattr(config, "_optcv_baseline", None)
    return [chosen[0]] if chosen else []


def pytest_benchmark_generate_machine_info(config: pytest.Config) -> dict[str, Any]:
    """Only what makes timings comparable: CPU, its ISA flags, cores, Python and the runtimes' versions.

    pytest-benchmark compares the whole dict and warns on any difference; the default one holds the
    hostname and the current clock, which differ on every run of a shared machine.
    """
    import os
    import platform

    versions = package_versions()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "isa": isa_flags(),  # what `optcv history import` keeps machines apart by, with the CPU and cores
        "machine": platform.machine(),
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "torch": versions["torch"],
        "onnxruntime": versions["onnxruntime"],
        "system": platform.system(),
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    results = getattr(config, "_optcv_ratio_results", [])
    if config.getoption("ratio_save") and results:
        from optcv._io import write_json

        path = Path(config.getoption("ratio_baseline"))
        existing = load_json(path, "ratio baseline", RECORD_BASELINE) if path.is_file() else None
        write_json(path, make_baseline(results, existing))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Record each failure's kind from its exception type (optcv.gate.failure_kind), never its message."""
    from optcv.gate.verdict import failure_kind

    report = yield
    if call.excinfo is not None and report.failed:
        kind = failure_kind(call.excinfo.value)
        if kind:
            report.user_properties.append(("optcv_failure_kind", kind))
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Name the kind of each failure, so a red CI says at once whether speed, parity or set-up broke."""
    failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    kinds = [(dict(r.user_properties).get("optcv_failure_kind"), r.nodeid) for r in failed]
    kinds = [(kind, nodeid) for kind, nodeid in kinds if kind]
    results = getattr(config, "_optcv_ratio_results", [])
    lines = getattr(config, "_optcv_gate_lines", [])
    baseline = getattr(config, "_optcv_baseline", None)
    if not results and not kinds and not lines and not baseline:
        return
    terminalreporter.section("optcv verdict")
    if baseline:
        terminalreporter.write_line(baseline[0], red=baseline[1], bold=baseline[1])
    for result in results:
        for key, ratio in result["ratios"].items():
            terminalreporter.write_line(f"{result['model']}:{key} speed-up {ratio['ratio']:.2f}× "
                                        f"(95% CI {ratio['ci_low']:.2f}–{ratio['ci_high']:.2f})")
    for line in lines:
        terminalreporter.write_line(line)
    for kind, nodeid in sorted(kinds):
        terminalreporter.write_line(f"{kind}: {nodeid}", red=True)
    if config.getoption("ratio_save") and results:
        terminalreporter.write_line(f"ratio baseline written to {config.getoption('ratio_baseline')}")


# ---------------------------------------------------------------------------------------------------------
# Artifacts, built once per session and cached across sessions by configuration and code version.


@pytest.fixture(scope="session")
def cifar(real_data_dir: Path) -> CIFAR10:
    return load_cifar10(real_data_dir, progress=False)


@pytest.fixture(scope="session")
def test_images(cifar: CIFAR10) -> np.ndarray:
    return cifar.test.images.numpy()


class ReferenceSources(dict[str, ModelSource]):
    """Each reference model (optcv.measure.reference) trained deterministically and exported, or taken from the
    cache, when a case first asks for it: the fast tier never builds the two torchvision nets."""

    def __init__(self, cifar: CIFAR10, for_timing: bool = False):
        super().__init__()
        self.cifar, self.for_timing = cifar, for_timing

    def __missing__(self, name: str) -> ModelSource:
        self[name] = ModelSource(*build_reference(name, self.cifar, default_cache_dir(), self.for_timing))
        return self[name]


@pytest.fixture(scope="session")
def model_sources(cifar: CIFAR10) -> dict[str, ModelSource]:
    return ReferenceSources(cifar)


def require_backend(backend: str) -> None:
    """Skip a case whose optional runtime is missing, with the reason; in CI, which installs every extra, fail."""
    reason = backend_unavailable(backend)
    if reason:
        skip_or_fail(reason)


@pytest.fixture(scope="session")
def timing_sources(cifar: CIFAR10) -> dict[str, ModelSource]:
    """The reference models' timing builds (optcv.measure.reference.timing_recipe), with this tree's code."""
    return ReferenceSources(cifar, for_timing=True)


@pytest.fixture
def timed_case(timing_sources: dict[str, ModelSource], cifar: CIFAR10):
    """A case's callable (optcv.measure.case), closed after its test."""
    made: list[TimedCase] = []

    def make(case: CaseId) -> TimedCase:
        if case.kind == "predict":
            require_backend(case.backend)
            timed = TimedCase(case, timing_sources[case.model], cifar.test.images[:PREDICT_IMAGES].numpy())
        else:
            timed = TimedCase(case, timing_sources[case.model], cifar.train.images[:512].numpy(),
                              cifar.train.labels[:512].numpy())
        made.append(timed)
        return timed

    yield make
    for timed in made:
        timed.close()


@pytest.fixture(scope="session")
def plain_predictor(model_sources: dict[str, ModelSource]):
    """Uncalibrated predictors with default settings (or the backend options given), for parity checks; one per
    model, backend and options for the whole session."""
    made: dict[tuple[str, str, str], Predictor] = {}

    def get(model: str, backend: str, **options: Any) -> Predictor:
        require_backend(backend)
        key = (model, backend, repr(sorted(options.items())))
        if key not in made:
            made[key] = make_predictor(backend, model_sources[model], **options)
        return made[key]

    yield get
    for predictor in made.values():
        predictor.close()
