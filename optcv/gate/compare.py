"""One A/B gate of two sides: its cases, timing and judging every case's test in both sides' pytest sessions (the
suite's tests in optcv's own trees, the plugin's cases of a user's declared models), re-tests; memory and
instructions in the harness workers, with each side's models."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optcv.data import load_cifar10, resolve_data_dir
from optcv.env import environment_info
from optcv.gate.config import GateConfig, case_specs, declared_models, recipes_for
from optcv.gate.memory import allocation_counter, measure_memory
from optcv.gate.sessions import SessionSettings, declared_session_args, plugin_node
from optcv.gate.sides import Side, same_length_trees, side_versions, subject_hash
from optcv.gate.suite import SESSION_ARGS as SUITE_SESSION_ARGS
from optcv.gate.suite import select_cases, suite_cases, time_suite_cases
from optcv.gate.verdict import CaseFinding, GateResult, MeasureFinding, Thresholds
from optcv.gate.worker.protocol import Built, CaseSpec, Setup
from optcv.gate.workers import build_all_artifacts
from optcv.measure.case import PREDICT_IMAGES, CaseId


def prepare_inputs(workdir: Path, data_dir: str | Path | None) -> tuple[dict[str, str], str]:
    """The identical inputs both sides are timed on: real test images, and training images with labels."""
    root = resolve_data_dir(data_dir).resolve()
    data = load_cifar10(root, progress=False)
    arrays = {"predict_images": data.test.images[:PREDICT_IMAGES].numpy(),
              "train_images": data.train.images[:512].numpy(), "train_labels": data.train.labels[:512].numpy()}
    paths = {}
    for name, array in arrays.items():
        paths[name] = str(workdir / f"{name}.npy")
        np.save(paths[name], array)
    return paths, str(root)


Log = Callable[[str], None]


@dataclass(frozen=True)
class GateCases:
    """What one gate compares: each case's pytest-benchmark test, which times it in both sides' sessions (the suite's
    in optcv's own trees; the plugin's latency case of a user's declared model), with the arguments its sessions
    need, and every case as the harness workers set it up for memory and instructions."""
    specs: tuple[CaseSpec, ...]
    tests: dict[str, str]  # case id -> node id
    session_args: tuple[str, ...] = SUITE_SESSION_ARGS


def gate_cases(config: GateConfig, head: Side) -> GateCases:
    """The cases `config` selects: a user's declared models' (their declarations), or the suite's tests."""
    if config.declarations is not None:
        specs = tuple(case_specs(config, declared_models(config, head.tree)))
        models = tuple(dict.fromkeys(spec.model for spec in specs))
        return GateCases(specs, {spec.id: plugin_node(spec.id) for spec in specs},
                         declared_session_args(config.declarations, models))
    tests = select_cases(suite_cases(head), config)
    parsed = [CaseId.parse(case) for case in tests]
    return GateCases(tuple(CaseSpec(c.model, c.kind, c.runtime, c.batch, c.threads) for c in parsed), tests)


def measure(base: Side, head: Side, config: GateConfig, thresholds: Thresholds, *, data_dir: str | Path | None,
            cache_dir: Path, workdir: Path, log: Log, progress: bool = False,
            artifacts: dict[str, Built] | None = None, cases: GateCases | None = None) -> GateResult:
    """Time every case's test A/B in both sides' pytest sessions, judge each, re-test and profile as the rule says;
    memory and instructions (in the harness workers) where asked for."""
    started = time.perf_counter()
    _check_tools(config)
    base, head = same_length_trees(base, workdir), same_length_trees(head, workdir)
    cases = cases or gate_cases(config, head)
    harness = any(m in config.measures for m in ("memory", "instructions"))
    # A gate of declared models alone needs no CIFAR-10: each model's inputs come from its declaration.
    reference = any(not s.declared for s in cases.specs)
    root = str(resolve_data_dir(data_dir).resolve()) if reference else None  # the sessions run in other folders
    inputs, artifacts = ({}, dict(artifacts or {}))
    if harness:
        inputs, root = prepare_inputs(workdir, data_dir) if reference else ({}, None)
        artifacts = _artifacts((base, head), cases.specs, config, artifacts, workdir, root, cache_dir, log)
    setup = {label: Setup(inputs, built, cases.specs) for label, built in artifacts.items()}
    findings: list[CaseFinding] = []
    retested: list[CaseFinding] = []
    notes: list[str] = []
    not_compared: list[tuple[str, str]] = []
    if "time" in config.measures:
        settings = SessionSettings(cases.session_args, (("OPTCV_DATA_DIR", root),) if root else ())
        timing = time_suite_cases(base, head, cases.tests, config, thresholds, workdir, settings, log, progress)
        findings, retested, notes, not_compared = timing.findings, timing.retested, timing.notes, timing.not_compared
    side_info = {label: _side_info(side, artifacts.get(label)) for label, side in (("base", base), ("head", head))}
    protocol = {**asdict(config), "thresholds": asdict(thresholds), "statistic":
                "per worker pair (a base and a head process set up alike), the median per-round head/base ratio; "
                "their mean; 95 % t interval over the pairs (k - 1 degrees of freedom)"}
    measured, measure_notes = _other_measures((base, head), list(cases.specs), config, thresholds, workdir, setup,
                                              log)
    return GateResult(side_info["base"], side_info["head"], findings, protocol, environment_info(),
                      time.perf_counter() - started, notes=[*notes, *measure_notes], retested=retested,
                      measured=measured, not_compared=not_compared)


def _check_tools(config: GateConfig) -> None:
    """A missing valgrind or compiler is a set-up error before, not after, the timing."""
    if "instructions" in config.measures:
        from optcv.gate.instructions import client_library

        client_library()
    if "memory" in config.measures:
        allocation_counter()


def _artifacts(sides: tuple[Side, Side], specs: Sequence[CaseSpec], config: GateConfig, given: dict[str, Built],
               workdir: Path, root: str | None, cache_dir: Path, log: Log) -> dict[str, Built]:
    """Each side's models as the harness workers need them, built with the side's code unless given."""
    missing = [side for side in sides if side.label not in given]
    for side in missing:
        log(f"building the {side.label} side's models ({side.revision or side.source_tree}, {side.python})")
    if not missing:
        return given
    return {**given, **build_all_artifacts(missing, workdir, recipes_for(specs, config.declarations), root,
                                           cache_dir)}


def _side_info(side: Side, built: Built | None) -> dict[str, Any]:
    if built is None:  # timed by the sessions alone: the side's code and its interpreter's libraries
        return {**side.describe(), "code_hash": subject_hash(side.source_tree), "versions": side_versions(side)}
    return {**side.describe(), "code_hash": _code_hash(side, built), "versions": built.versions}


def _other_measures(sides: tuple[Side, Side], specs: list[CaseSpec], config: GateConfig,
                    thresholds: Thresholds, workdir: Path, setup: dict[str, Setup], log: Log
                    ) -> tuple[list[MeasureFinding], list[str]]:
    measured: list[MeasureFinding] = []
    notes: list[str] = []
    if "memory" in config.measures:
        started = time.perf_counter()
        measured += measure_memory(sides, specs, setup, thresholds, workdir, config.memory_repeats, config.seed)
        log(f"memory: {len(specs)} case(s), {config.memory_repeats} forked measurement(s) per side each: "
            f"{time.perf_counter() - started:.0f} s")
    if "instructions" in config.measures:
        from optcv.gate.instructions import measure_instructions

        log("instructions: the batch-1 one-thread cases under valgrind (callgrind)")
        counted, notes = measure_instructions(sides, specs, setup, thresholds, workdir, config.seed, log,
                                              config.instruction_repeats)
        measured += counted
    for finding in measured:
        log(f"{finding.case} {finding.measure}: {finding.change_pct:+.2f} % ({finding.ci_low_pct:+.2f} … "
            f"{finding.ci_high_pct:+.2f}) → {finding.verdict.value}")
    return measured, notes


def _code_hash(side: Side, built: Built) -> str:
    """What the side's timed code is: optcv's own source, or (a user's repository) what its models are made of."""
    return subject_hash(side.source_tree) if side.harness else built.code_hash
