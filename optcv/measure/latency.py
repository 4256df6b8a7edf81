"""Timing: per-image latency the course's way, batched throughput, paired ratios and the ratio gate.

On shared machines the same code's absolute median moves by 20-50 % between runs, while the ratio of two
backends timed interleaved in one process (A B A B … on the same images) moves by a few percent. So every
comparison here is made inside one run, interleaved, and reported as a ratio with a bootstrap interval.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optcv._io import write_json
from optcv.backends.base import Predictor
from optcv.env import environment_info
from optcv.errors import OptcvError, require_at_least_one
from optcv.stats import BOOTSTRAP_RESAMPLES, bootstrap_median_ci, median_ci_order_statistics

RESULT_SCHEMA = "optcv-bench/1"


@dataclass(frozen=True)
class BenchConfig:
    n_single: int = 10_000  # the course's: one prediction per test image
    chunk: int = 500  # single-image calls per backend before switching to the next (interleaving)
    warmup: int = 200
    batch_sizes: tuple[int, ...] = (64, 256)
    batched_images: int = 2048  # images per throughput measurement and backend
    batched_rounds: int = 8  # the batched images are timed in this many interleaved rounds: a median and interval
    calibration_calls: int = 300
    bootstrap: int = BOOTSTRAP_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        require_at_least_one(self, "n_single", "chunk", "batched_images", "batched_rounds", "calibration_calls",
                             "bootstrap")
        if any(b < 1 for b in self.batch_sizes):
            raise OptcvError(f"batch sizes must be at least 1, got {', '.join(map(str, self.batch_sizes))}")


@dataclass(frozen=True)
class LatencyStats:
    n: int
    mean_us: float
    median_us: float
    p95_us: float
    min_us: float
    stdev_us: float
    median_ci_low_us: float | None = None  # the median's 95 % interval (order statistics); None in older files
    median_ci_high_us: float | None = None

    @classmethod
    def from_samples(cls, samples_us: np.ndarray) -> LatencyStats:
        low, high = median_ci_order_statistics(samples_us)
        return cls(int(samples_us.size), float(samples_us.mean()), float(np.median(samples_us)),
                   float(np.percentile(samples_us, 95)), float(samples_us.min()), float(samples_us.std()), low, high)


@dataclass(frozen=True)
class RatioEstimate:
    """How many times faster `backend` is than `reference` per image: median over interleaved chunks."""
    reference: str
    backend: str
    ratio: float
    ci_low: float
    ci_high: float
    chunk_ratios: list[float]

    @property
    def key(self) -> str:
        return f"{self.reference}/{self.backend}"


def _singles(images: np.ndarray, n: int) -> list[np.ndarray]:
    """n one-image views cycling through `images`, sliced before timing so slicing is not timed."""
    return [images[i % len(images):i % len(images) + 1] for i in range(n)]


def time_interleaved(predictors: Sequence[Predictor], images: np.ndarray, n: int, chunk: int,
                     warmup: int = 200) -> list[np.ndarray]:
    """Microseconds of each of `n` single-image predictions, one array per predictor (in the given order),
    timed in alternating chunks.

    The order of the predictors flips every chunk (A B, B A, …) so slow drifts of the machine fall on
    all of them alike.
    """
    singles = _singles(images, n)
    for predictor in predictors:
        for x in singles[:warmup]:
            predictor.predict(x)
    samples = [np.empty(n, dtype=np.float64) for _ in predictors]
    clock = time.perf_counter_ns
    indices = list(range(len(predictors)))
    for chunk_index, start in enumerate(range(0, n, chunk)):
        for k in indices if chunk_index % 2 == 0 else reversed(indices):
            out = samples[k]
            predict = predictors[k].predict
            for i in range(start, min(start + chunk, n)):
                x = singles[i]
                t0 = clock()
                predict(x)
                out[i] = clock() - t0
    return [values / 1000.0 for values in samples]


def paired_ratio(samples: dict[str, np.ndarray], reference: str, backend: str, chunk: int,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> RatioEstimate:
    """Ratio of per-chunk median latencies, reference ÷ backend, with a bootstrap 95 % interval."""
    ref, other = samples[reference], samples[backend]
    ratios = np.array([np.median(ref[s:s + chunk]) / np.median(other[s:s + chunk])
                       for s in range(0, len(ref), chunk)])
    low, high = bootstrap_median_ci(ratios, resamples, seed)
    return RatioEstimate(reference, backend, float(np.median(ratios)), low, high, ratios.round(4).tolist())


def time_batched(predictor: Predictor, images: np.ndarray, batch_size: int, n_images: int,
                 warmup: bool = True) -> float:
    """Images per second at `batch_size`, over about `n_images` images (after one warm-up batch)."""
    batches = [images[(i * batch_size) % len(images):][:batch_size] for i in range(max(1, n_images // batch_size))]
    batches = [b for b in batches if len(b) == batch_size] or [np.resize(images, (batch_size, *images.shape[1:]))]
    if warmup:
        predictor.predict(batches[0])
    started = time.perf_counter()
    for batch in batches:
        predictor.predict(batch)
    return len(batches) * batch_size / (time.perf_counter() - started)


def time_batched_rounds(predictors: Sequence[Predictor], images: np.ndarray, batch_size: int, n_images: int,
                        rounds: int) -> list[np.ndarray]:
    """Images per second of each predictor in each of `rounds` rounds (one array per predictor), the
    predictors taking turns every round in alternating order, so a slow spell of the machine falls on all
    alike; about `n_images` images per predictor in all."""
    per_round = max(1, n_images // (batch_size * rounds)) * batch_size
    rates = [np.empty(rounds) for _ in predictors]
    order = list(range(len(predictors)))
    for round_index in range(rounds):
        for k in order if round_index % 2 == 0 else reversed(order):
            rates[k][round_index] = time_batched(predictors[k], images, batch_size, per_round,
                                                 warmup=round_index == 0)
    return rates


def throughput_stats(rates: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Median images/s over rounds with its bootstrap 95 % interval and n."""
    low, high = bootstrap_median_ci(rates, resamples, seed)
    return {"images_per_s": float(np.median(rates)), "ci_low": low, "ci_high": high, "rounds": int(rates.size)}


def scaled_rounds(seconds_per_call: float, rounds: int, iterations: int, budget_s: float,
                  min_rounds: int = 5) -> tuple[int, int]:
    """Rounds and iterations for a benchmark case, scaled to its cost: as asked while they fit in
    `budget_s`, else fewer iterations, then fewer rounds (never under `min_rounds`), so ResNet-18 (~1,000x
    TutorialNet's work per image) costs about as much suite time as TutorialNet."""
    if seconds_per_call <= 0:
        raise ValueError(f"seconds per call must be positive, got {seconds_per_call}")
    fit = max(1, int(budget_s / seconds_per_call))
    iterations = max(1, min(iterations, fit // rounds))
    return max(min(min_rounds, rounds), min(rounds, fit // iterations)), iterations


def seconds_per_call(call: Callable[[], Any], calls: int = 3) -> float:
    """The median wall time of a few calls (after the caller's warm-up): the cost used to scale rounds."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def pick_fastest(candidates: Sequence[Predictor], images: np.ndarray, calls: int,
                 batch_size: int = 1) -> Predictor:
    """The candidate with the lowest median time per call, measured interleaved (a short calibration); the
    others are closed."""
    if len(candidates) == 1:
        return candidates[0]
    if batch_size == 1:
        samples = time_interleaved(candidates, images, calls, chunk=max(1, calls // 6), warmup=min(50, calls))
        best = int(np.argmin([float(np.median(s)) for s in samples]))
    else:
        # The higher of two short runs' worse rate: one lucky run does not win.
        worst_rates = [min(time_batched(c, images, batch_size, batch_size * 2) for _ in range(2)) for c in candidates]
        best = int(np.argmax(worst_rates))
    for index, candidate in enumerate(candidates):
        if index != best:
            candidate.close()
    return candidates[best]


@dataclass
class BackendResult:
    settings: dict[str, Any]
    latency: LatencyStats
    throughput: dict[int, dict[str, Any]] = field(default_factory=dict)  # batch → {images_per_s, settings}


@dataclass
class BenchResult:
    config: BenchConfig
    environment: dict[str, Any]
    model: str
    backends: dict[str, BackendResult]
    ratios: list[RatioEstimate]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "model": self.model,
            "config": dataclasses.asdict(self.config),
            "environment": self.environment,
            "backends": {name: {"settings": r.settings, "latency_us": dataclasses.asdict(r.latency),
                                "throughput": {str(b): t for b, t in r.throughput.items()}}
                         for name, r in self.backends.items()},
            "ratios": {r.key: dataclasses.asdict(r) for r in self.ratios},
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


def run_bench(backends: dict[str, list[Predictor]], images: np.ndarray, config: BenchConfig = BenchConfig(),
              model: str = "", reference: str | None = None) -> BenchResult:
    """Time every backend the course's way and batched; ratios of each backend against `reference`.

    Each backend comes with one or more candidate predictors (thread counts, oneDNN on or off); a short
    interleaved calibration picks the fastest per batch size, so every backend, PyTorch included, is
    measured at its best on this machine, and the chosen settings are reported with the numbers.
    """
    if not backends:
        raise OptcvError("no backend to time")
    reference = reference or next(iter(backends))
    chosen = {name: pick_fastest(c, images, config.calibration_calls) for name, c in backends.items()}
    timed = time_interleaved(list(chosen.values()), images, config.n_single, config.chunk, config.warmup)
    samples = dict(zip(chosen, timed, strict=True))
    results = {name: BackendResult(p.describe(), LatencyStats.from_samples(samples[name]))
               for name, p in chosen.items()}
    for batch_size in config.batch_sizes:
        best = {name: pick_fastest(c, images, config.calibration_calls, batch_size) for name, c in backends.items()}
        rates = time_batched_rounds(list(best.values()), images, batch_size, config.batched_images,
                                    config.batched_rounds)
        for (name, predictor), rate in zip(best.items(), rates, strict=True):
            results[name].throughput[batch_size] = {**throughput_stats(rate, config.bootstrap, config.seed),
                                                    "settings": predictor.describe()}
    ratios = [paired_ratio(samples, reference, name, config.chunk, config.bootstrap, config.seed)
              for name in chosen if name != reference]
    for candidates in backends.values():
        for candidate in candidates:
            candidate.close()
    return BenchResult(config, environment_info(), model, results, ratios)
