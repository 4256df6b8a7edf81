"""Timing both sides' sessions (optcv.gate.sessions) at a test's benchmark call in rounds, judging the samples, and
profiling a failing test's operators."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optcv.gate.attribution import OUTSIDE, PROFILE_REPEATS, attribution
from optcv.gate.config import GateConfig
from optcv.gate.sessions import SessionWorker
from optcv.gate.verdict import CaseFinding, judge, paired_change
from optcv.gate.worker.protocol import Profile, Profiled, Time, Timed


@dataclass
class CaseSamples:
    case: str
    calls_per_turn: int
    # Per worker index, per round: the median µs of that worker's calls in its turn.
    base_us: list[list[float]] = field(default_factory=list)
    head_us: list[list[float]] = field(default_factory=list)


def time_case(workers: Sequence[SessionWorker], case: str, config: GateConfig, rng: np.random.Generator) -> CaseSamples:
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


def _take_round(workers: Sequence[SessionWorker], samples: CaseSamples, config: GateConfig,
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


def profile_case(workers: Sequence[SessionWorker], case: str, calls: int, rng: np.random.Generator,
                 repeats: int = PROFILE_REPEATS, seed: int = 0) -> dict[str, Any]:
    """Per-operator changes with intervals (optcv.gate.attribution), from `repeats` profiles of `calls` calls
    on the first worker pair, base and head in a random order each repeat."""
    pair = [next(w for w in workers if w.side.label == label and w.pair == 0) for label in ("base", "head")]
    profiles: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    profiled = calls  # the fewest calls a profile held (a session may hold fewer than asked)
    for _ in range(repeats):
        for index in rng.permutation(2):
            worker = pair[int(index)]
            answer = worker.ask(Profile(case, calls), Profiled)
            profiles[worker.side.label].append({**answer.ops_us_per_call, OUTSIDE: answer.outside_us_per_call})
            profiled = min(profiled, answer.calls or calls)
    return attribution(profiles["base"], profiles["head"], profiled, seed=seed)
