"""Timing both sides case by case in rounds, judging each case, re-testing the failing and the undecided ones."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from optcv.data import load_cifar10, resolve_data_dir
from optcv.env import environment_info
from optcv.gate.attribution import OUTSIDE, PROFILE_REPEATS, attribution
from optcv.gate.config import PREDICT_IMAGES, GateConfig, case_specs, declared_models, recipes_for
from optcv.gate.memory import allocation_counter, measure_memory
from optcv.gate.sides import Side, same_length_trees, subject_hash
from optcv.gate.verdict import CaseFinding, GateResult, MeasureFinding, Thresholds, judge, paired_change
from optcv.gate.worker.protocol import Built, CaseSpec, Profile, Profiled, Setup, Time, Timed
from optcv.gate.workers import Worker, build_all_artifacts, worker_pool


@dataclass
class CaseSamples:
    case: str
    calls_per_turn: int
    # Per worker index, per round: the median µs of that worker's calls in its turn.
    base_us: list[list[float]] = field(default_factory=list)
    head_us: list[list[float]] = field(default_factory=list)


def time_case(workers: Sequence[Worker], case: str, config: GateConfig, rng: np.random.Generator) -> CaseSamples:
    """Warm every worker up alike, then rounds (at least `config.min_rounds`, about `config.case_seconds` of
    timed work) in which every worker takes one turn of the same number of calls, in a random order. Rounds
    are added while the rounds' own noise keeps the interval wider than the target, until
    `config.max_case_seconds` on the clock."""
    started = time.perf_counter()
    probe = [np.median(w.ask(Time(case, 3), Timed).ns) for w in workers]
    per_call_ns = float(np.median(probe))
    warmup = int(min(2000, max(3, config.warmup_ms * 1e6 / per_call_ns)))
    for worker in workers:
        worker.ask(Time(case, warmup), Timed)
    calls = int(min(1000, max(1, round(config.turn_ms * 1e6 / per_call_ns))))
    round_seconds = len(workers) * calls * per_call_ns / 1e9
    rounds = max(config.min_rounds, int(config.case_seconds / round_seconds))
    per_side = len(workers) // 2
    samples = CaseSamples(case, calls, [[] for _ in range(per_side)], [[] for _ in range(per_side)])
    for _ in range(rounds):
        _take_round(workers, samples, config, rng)
    while not _precise_enough(samples, config):
        for _ in range(max(5, len(samples.base_us[0]) // 4)):
            if time.perf_counter() - started >= config.max_case_seconds:
                return samples
            _take_round(workers, samples, config, rng)
    return samples


def _take_round(workers: Sequence[Worker], samples: CaseSamples, config: GateConfig,
                rng: np.random.Generator) -> None:
    """One turn of `samples.calls_per_turn` calls for every worker, in a random order."""
    for index in rng.permutation(len(workers)):
        worker = workers[int(index)]
        time.sleep(config.gap_ms / 1000)
        answer = worker.ask(Time(samples.case, samples.calls_per_turn), Timed)
        side = samples.base_us if worker.side.label == "base" else samples.head_us
        side[worker.pair].append(float(np.median(answer.ns)) / 1000)


def judge_samples(samples: CaseSamples, earlier: CaseSamples | None, threshold_pct: float, seed: int) -> CaseFinding:
    """A case's finding from its worker pairs, and those of an earlier pool of workers where it has one."""
    base_us = [*earlier.base_us, *samples.base_us] if earlier else samples.base_us
    head_us = [*earlier.head_us, *samples.head_us] if earlier else samples.head_us
    return judge(samples.case, base_us, head_us, threshold_pct, samples.calls_per_turn, seed=seed,
                 passes=2 if earlier else 1)


def _precise_enough(samples: CaseSamples, config: GateConfig) -> bool:
    """Whether more rounds would no longer narrow the interval enough to matter: the whole interval is within
    the target, or its rounds' part is and the rest is the worker pairs' disagreement, which only other
    processes (the re-test of an undecided case) can settle. Looks at widths only, never at the estimate."""
    for resample_pairs in (True, False):
        change = paired_change(samples.base_us, samples.head_us, resamples=500, seed=config.seed,
                               resample_pairs=resample_pairs)
        if (change.ci_high_pct - change.ci_low_pct) / 2 <= config.target_half_width_pct:
            return True
    return False


def profile_case(workers: Sequence[Worker], case: str, calls: int, rng: np.random.Generator,
                 repeats: int = PROFILE_REPEATS, seed: int = 0) -> dict[str, Any]:
    """Per-operator changes with intervals (optcv.gate.attribution), from `repeats` profiles of `calls` calls
    on the first worker pair, base and head in a random order each repeat."""
    pair = [next(w for w in workers if w.side.label == label and w.pair == 0) for label in ("base", "head")]
    profiles: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    for _ in range(repeats):
        for index in rng.permutation(2):
            worker = pair[int(index)]
            answer = worker.ask(Profile(case, calls), Profiled)
            profiles[worker.side.label].append({**answer.ops_us_per_call, OUTSIDE: answer.outside_us_per_call})
    return attribution(profiles["base"], profiles["head"], calls, seed=seed)


def prepare_inputs(workdir: Path, data_dir: str | Path | None) -> tuple[dict[str, str], str]:
    """The identical inputs both sides are timed on: real test images, and training images with labels."""
    root = resolve_data_dir(data_dir)
    data = load_cifar10(root, progress=False)
    arrays = {"predict_images": data.test.images[:PREDICT_IMAGES].numpy(),
              "train_images": data.train.images[:512].numpy(), "train_labels": data.train.labels[:512].numpy()}
    paths = {}
    for name, array in arrays.items():
        paths[name] = str(workdir / f"{name}.npy")
        np.save(paths[name], array)
    return paths, str(root)


Log = Callable[[str], None]


def measure(base: Side, head: Side, config: GateConfig, thresholds: Thresholds, *, data_dir: str | Path | None,
            cache_dir: Path, workdir: Path, log: Log, progress: bool = False,
            artifacts: dict[str, Built] | None = None) -> GateResult:
    """Build both sides' artifacts (unless given), time every case A/B, judge each, profile the failing ones."""
    started = time.perf_counter()
    # A missing valgrind or compiler is a set-up error before, not after, the timing.
    if "instructions" in config.measures:
        from optcv.gate.instructions import client_library

        client_library()
    if "memory" in config.measures:
        allocation_counter()
    base, head = same_length_trees(base, workdir), same_length_trees(head, workdir)
    specs = case_specs(config, declared_models(config, head.tree))
    # A gate of declared models alone needs no CIFAR-10: each model's inputs come from its declaration.
    inputs, root = prepare_inputs(workdir, data_dir) if any(not s.declared for s in specs) else ({}, None)
    artifacts = dict(artifacts or {})
    missing = [side for side in (base, head) if side.label not in artifacts]
    for side in missing:
        log(f"building the {side.label} side's models ({side.revision or side.source_tree}, {side.python})")
    if missing:
        artifacts.update(build_all_artifacts(missing, workdir, recipes_for(specs, config.declarations), root,
                                             cache_dir))
    setup = {label: Setup(inputs, artifacts[label], tuple(specs)) for label in artifacts}
    findings: list[CaseFinding] = []
    samples: dict[str, CaseSamples] = {}
    settings: dict[str, Any] = {"base": {}, "head": {}}
    if "time" in config.measures:
        findings, settings, samples = _time_cases((base, head), specs, config, thresholds, workdir, setup, log,
                                                  progress, 0)
    findings, retested = _retest(findings, samples, (base, head), specs, config, thresholds, workdir, setup, log,
                                 progress)
    side_info = {label: {**side.describe(), "code_hash": _code_hash(side, artifacts[label]),
                         "versions": artifacts[label].versions, "settings": settings[label]}
                 for label, side in (("base", base), ("head", head))}
    protocol = {**asdict(config), "thresholds": asdict(thresholds), "statistic":
                f"per worker pair (a base and a head process, set up in {config.setup_order} order), the median "
                "per-round head/base ratio; their mean; 95 % t interval over the pairs (k - 1 degrees of freedom)"}
    measured, notes = _other_measures((base, head), specs, config, thresholds, workdir, setup, log)
    return GateResult(side_info["base"], side_info["head"], findings, protocol, environment_info(),
                      time.perf_counter() - started, notes=notes, retested=retested, measured=measured)


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
