"""What the A/B gate times: its settings and its cases."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optcv.env import usable_cores
from optcv.errors import OptcvError
from optcv.measure.reference import COURSE_MODELS, REFERENCE_MODELS
from optcv.runtime import DEFAULT_BACKENDS
from optcv.training.models import arch_name

MODELS = COURSE_MODELS
BACKENDS = DEFAULT_BACKENDS
PREDICT_IMAGES = 2048

# Batched and training cases are gated at one thread: on a 2-core machine shared with the gate's own
# processes, all-core runs of 5-50 ms calls moved ±5-20 % between rounds of identical code (measured here),
# too much to see 5 %. The suite still times them at every thread count.
BATCH_THREADS = 1


@dataclass(frozen=True)
class GateConfig:
    models: tuple[str, ...] = MODELS
    workers_per_side: int = 2
    min_rounds: int = 20
    turn_ms: float = 20.0  # timed work per worker turn; short turns let both sides share the machine's moods
    case_seconds: float = 3.0  # timed work per case, both sides: sets the number of rounds
    # A noisy case (a training step on a shared VM) keeps adding rounds, up to max_case_seconds, until its
    # interval's half-width is at most target_half_width_pct. The rule looks at the interval's width only,
    # never at the estimate, so it cannot steer the verdict.
    target_half_width_pct: float = 1.0
    max_case_seconds: float = 9.0
    warmup_ms: float = 200.0
    gap_ms: float = 2.0  # idle time between turns, so the last worker's spinning threads settle first
    batch_sizes: tuple[int, ...] = (64, 256)
    train_batch: int = 64
    cases: tuple[str, ...] = ()  # glob patterns; empty: every case
    profile_ms: float = 500.0  # per side, for a failing case's operator comparison
    # A case that fails is timed again with a fresh pool of workers before the gate says so: a process's
    # memory placement alone moved identical code by +17 % once in CI, and a real slowdown survives the re-test.
    retest_failures: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown or not self.models:
            name = unknown[0] if unknown else "(none)"
            raise OptcvError(f"unknown gate model {name}: choose from {', '.join(MODELS)}")
        if self.workers_per_side < 1 or self.min_rounds < 5:
            raise OptcvError("the gate needs at least 1 worker per side and 5 rounds")


def case_specs(config: GateConfig) -> list[dict[str, Any]]:
    """Every gated case: each backend at batch 1 (1 thread and all cores), batched at all cores, and a
    training step, for each model."""
    cores = usable_cores()
    specs: list[dict[str, Any]] = []
    for model in config.models:
        for backend in BACKENDS:
            for threads in sorted({1, cores}):
                specs.append({"model": model, "kind": "predict", "backend": backend, "batch": 1, "threads": threads})
        for batch in config.batch_sizes:
            for backend in BACKENDS:
                specs.append({"model": model, "kind": "predict", "backend": backend, "batch": batch,
                              "threads": BATCH_THREADS})
        specs.append({"model": model, "kind": "train", "backend": "pytorch", "batch": config.train_batch,
                      "threads": BATCH_THREADS})
    for spec in specs:
        what = spec["backend"] if spec["kind"] == "predict" else "train"
        spec["id"] = f"{spec['model']}/{what}/b{spec['batch']}/t{spec['threads']}"
    if config.cases:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s["id"], p) for p in config.cases)]
        if not specs:
            raise OptcvError(f"no gate case matches {' '.join(config.cases)}; case names look like "
                             "tutorial/onnxruntime/b1/t1 or tunable/train/b64/t2")
    return specs


# Each side trains its models with its own code. Weights only need to be realistic (trained, not random), so
# each reference recipe (optcv.measure.reference) runs for one epoch on a stratified subset: an uncached
# build stays under a minute.
BUILD_TRAIN_IMAGES = 4_000
BUILD_EPOCHS = 1


def build_recipes(models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What a side's worker needs to build each model, as plain data (the worker imports no optcv of ours)."""
    recipes = {}
    for name in models:
        spec = REFERENCE_MODELS[name]
        recipes[name] = {"arch": arch_name(spec.model), "config": dataclasses.asdict(spec.model),
                         "optimizer": spec.train.optimizer, "lr": spec.train.lr, "batch_size": spec.train.batch_size,
                         "seed": spec.train.seed, "epochs": BUILD_EPOCHS, "train_images": BUILD_TRAIN_IMAGES}
    return recipes
