"""One A/B gate of two sides: its cases, each side's models, timing and judging every case (the suite's tests in both
sides' pytest sessions, a user's declared models in the harness workers), re-tests, memory and instructions."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from optcv.data import load_cifar10, resolve_data_dir
from optcv.env import environment_info
from optcv.gate.attribution import PROFILE_REPEATS
from optcv.gate.config import GateConfig, case_specs, declared_models, recipes_for
from optcv.gate.memory import allocation_counter, measure_memory
from optcv.gate.sides import Side, same_length_trees, side_versions, subject_hash
from optcv.gate.suite import select_cases, suite_cases, time_suite_cases
from optcv.gate.timing import CaseSamples, judge_samples, profile_case, time_case
from optcv.gate.verdict import CaseFinding, GateResult, MeasureFinding, Thresholds
from optcv.gate.worker.protocol import Built, CaseSpec, Setup
from optcv.gate.workers import build_all_artifacts, worker_pool
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
    """What one gate compares: every case as the harness workers would set it up (memory, instructions, a user's
    declared models), and for optcv's own trees the benchmark suite's test of each case, which times it."""
    specs: tuple[CaseSpec, ...]
    tests: dict[str, str]  # case id -> node id; empty for declared models, which the harness workers time


def gate_cases(config: GateConfig, head: Side) -> GateCases:
    """The cases `config` selects: a user's declared models' (their declarations), or the suite's tests."""
    if config.declarations is not None:
        return GateCases(tuple(case_specs(config, declared_models(config, head.tree))), {})
    tests = select_cases(suite_cases(head), config)
    specs = []
    for case in tests:
        parsed = CaseId.parse(case)
        specs.append(CaseSpec(parsed.model, parsed.kind, parsed.runtime, parsed.batch, parsed.threads))
    return GateCases(tuple(specs), tests)


def measure(base: Side, head: Side, config: GateConfig, thresholds: Thresholds, *, data_dir: str | Path | None,
            cache_dir: Path, workdir: Path, log: Log, progress: bool = False,
            artifacts: dict[str, Built] | None = None, cases: GateCases | None = None) -> GateResult:
    """Time every case A/B (the suite's tests in both sides' pytest sessions; a declared model's in the harness
    workers), judge each, re-test and profile as the rule says; memory and instructions where asked for."""
    started = time.perf_counter()
    _check_tools(config)
    base, head = same_length_trees(base, workdir), same_length_trees(head, workdir)
    cases = cases or gate_cases(config, head)
    harness = not cases.tests or any(m in config.measures for m in ("memory", "instructions"))
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
    settings: dict[str, Any] = {"base": {}, "head": {}}
    if "time" in config.measures and cases.tests:
        timing = time_suite_cases(base, head, cases.tests, config, thresholds, workdir,
                                  {"OPTCV_DATA_DIR": root} if root else {}, log, progress)
        findings, retested, notes, not_compared = timing.findings, timing.retested, timing.notes, timing.not_compared
    elif "time" in config.measures:
        findings, settings, samples = _time_cases((base, head), list(cases.specs), config, thresholds, workdir,
                                                  setup, log, progress, 0)
        findings, retested = _retest(findings, samples, (base, head), list(cases.specs), config, thresholds, workdir,
                                     setup, log, progress)
    side_info = {label: _side_info(side, artifacts.get(label), settings[label])
                 for label, side in (("base", base), ("head", head))}
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


def _side_info(side: Side, built: Built | None, settings: dict[str, Any]) -> dict[str, Any]:
    if built is None:  # timed by the suite's sessions alone: the side's code and its interpreter's libraries
        return {**side.describe(), "code_hash": subject_hash(side.source_tree), "versions": side_versions(side),
                "settings": settings}
    return {**side.describe(), "code_hash": _code_hash(side, built), "versions": built.versions,
            "settings": settings}


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


def _retest(findings: list[CaseFinding], samples: dict[str, CaseSamples], sides: tuple[Side, Side],
            specs: list[CaseSpec], config: GateConfig, thresholds: Thresholds, workdir: Path,
            setup: dict[str, Setup], log: Log, progress: bool) -> tuple[list[CaseFinding], list[CaseFinding]]:
    """The failing and the undecided cases timed again in one pool of fresh workers, set up in the mirrored order,
    and judged on the worker pairs of both pools. Returns the findings with the re-tests' last word, and the
    first-pass findings of the re-tested cases."""
    # Both pools together, not the re-test alone: its 4 pairs (t with 3 degrees of freedom) miss a real +5 % in a
    # case whose pairs spread 3 % one time in three, and the two pools' mirrored set-up orders balance each other.
    again = {f.case: samples[f.case] for f in findings if f.failed or f.undecided}
    if not again or not config.retest_failures:
        return findings, []
    log(f"re-testing {len(again)} case(s) with fresh workers: {', '.join(sorted(again))}")
    final, _, _ = _time_cases(sides[::-1], [s for s in specs if s.id in again], config, thresholds, workdir,
                              setup, log, progress, 1, again)
    confirmed = {f.case: f for f in final}
    return [confirmed.get(f.case, f) for f in findings], [f for f in findings if f.case in confirmed]


def _time_cases(sides: tuple[Side, Side], specs: list[CaseSpec], config: GateConfig, thresholds: Thresholds,
                workdir: Path, setup: dict[str, Setup], log: Log, progress: bool, attempt: int,
                earlier: Mapping[str, CaseSamples] | None = None
                ) -> tuple[list[CaseFinding], dict[str, Any], dict[str, CaseSamples]]:
    """Every case timed A/B in one pool of fresh workers (attempt 0: the first pass; 1: the re-test, whose
    workers get other memory layouts and the set-up order mirrored), judged, and profiled where it failed. A case with
    `earlier` samples (another pool's) is judged on the worker pairs of both."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([config.seed, attempt])
    findings: list[CaseFinding] = []
    timed: dict[str, CaseSamples] = {}
    earlier = earlier or {}
    # A re-test's workers set up only the cases they time (loading a model is most of a worker's set-up).
    setup = {label: replace(request, cases=tuple(specs)) for label, request in setup.items()}
    with worker_pool(sides, config.workers_per_side, workdir, setup, seed=attempt, order=config.setup_order,
                     layout_seed=config.seed, hash_seeds=config.hash_seeds,
                     tree_per_pair=config.tree_per_pair) as workers:
        for spec in tqdm(specs, desc="gate" if attempt == 0 else "re-test", unit="case",
                         disable=not progress or None):
            case = spec.id
            timed[case] = samples = time_case(workers, case, config, rng)
            finding = judge_samples(samples, earlier.get(case), thresholds.for_case(case), config.seed)
            last_word = attempt == 1 or not config.retest_failures
            if finding.failed and last_word and config.profile_ms > 0:
                calls = max(3, int(config.profile_ms * 1000 / PROFILE_REPEATS / max(finding.base_median_us, 1.0)))
                finding = replace(finding, profile=profile_case(workers, case, min(calls, 2000), rng,
                                                                seed=config.seed))
            findings.append(finding)
            log(f"{finding.case}: {finding.change_pct:+.1f} % ({finding.ci_low_pct:+.1f} … "
                f"{finding.ci_high_pct:+.1f}) → {finding.verdict.value}")
        settings = {w.side.label: w.settings for w in workers}
    return findings, settings, timed
