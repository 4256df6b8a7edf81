"""`optcv how-fast`: every backend on every reference model, against this machine's limits, in one run.

For each reference model (optcv.measure.reference, built or taken from the cache) the backends are timed the way
`optcv bench` times them — single-image latency interleaved, batched throughput, each backend calibrated to
its fastest setting (or the settings a `--search` kept) — then set against the fp32 GEMM peak and each
runtime's per-call overhead measured in the same run (optcv.measure.limits). The work per call differs by ~850×
between the models, so the number of timed calls is scaled to a time budget per backend. A user's declared
model (optcv.declared) is measured the same way, on its own inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from optcv.data import default_cache_dir, load_cifar10
from optcv.declared.config import DeclaredModel
from optcv.declared.inputs import sample_inputs
from optcv.env import environment_info
from optcv.errors import BackendCannotRun, OptcvError
from optcv.measure.latency import BenchConfig, run_bench, seconds_per_call
from optcv.measure.limits import limits_of_source
from optcv.measure.reference import REFERENCE_MODELS, build_reference, reference_accuracy
from optcv.measure.search import tuned_candidates
from optcv.runtime import (
    BACKENDS,
    NON_COMPILING_BACKENDS,
    ModelSource,
    backend_unavailable,
    declared_source,
    make_predictor,
    runnable_backends,
)

HOW_FAST_SCHEMA = "optcv-how-fast/1"
DECLARED_INPUTS = 256  # a declared model's inputs the timed calls cycle through


@dataclass(frozen=True)
class HowFastConfig:
    models: tuple[str, ...] = tuple(REFERENCE_MODELS)
    backends: tuple[str, ...] = NON_COMPILING_BACKENDS  # torch-compile on request: it compiles per model and shape
    batch_size: int = 64
    seconds_per_backend: float = 3.0  # single-image calls per backend: about this much timed work
    min_calls: int = 200
    max_calls: int = 4000


@dataclass
class ModelSpeed:
    model: str
    accuracy: dict[str, Any]
    bench: dict[str, Any]  # optcv.measure.latency.BenchResult.to_dict()
    limits: dict[str, Any]  # optcv.measure.limits.Limits.to_dict()


@dataclass
class HowFastResult:
    config: HowFastConfig
    models: list[ModelSpeed]
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": HOW_FAST_SCHEMA, "config": asdict(self.config), "environment": self.environment,
                "models": [asdict(m) for m in self.models]}


def calls_for(seconds_per_call: float, config: HowFastConfig) -> int:
    """Single-image calls per backend so that one backend's timing takes about `seconds_per_backend`."""
    wanted = int(config.seconds_per_backend / max(seconds_per_call, 1e-7))
    return max(config.min_calls, min(config.max_calls, wanted))


def run_how_fast(config: HowFastConfig = HowFastConfig(), data_dir: str | Path | None = None,
                 log: Any = lambda _m: None, declared: Mapping[str, DeclaredModel] | None = None) -> HowFastResult:
    """Every backend on every model of `config`: the reference models, and the user's `declared` ones by name (a
    declared model runs the backends of `config` that it lists, on its own inputs)."""
    declared = declared or {}
    known = [*REFERENCE_MODELS, *declared]
    unknown = [m for m in config.models if m not in known]
    if unknown:
        raise OptcvError(f"unknown model {unknown[0]}: choose from {', '.join(known)} (your own: declare it in "
                         "pyproject.toml)")
    onnx_only = [m for m in config.models if m in declared and declared[m].factory is None]
    if onnx_only:
        raise OptcvError(f"how-fast sets each model against the machine's peak by counting its MACs in PyTorch, and "
                         f"declared model {onnx_only[0]!r} is an ONNX file; declare a factory, or use `optcv bench`")
    if any(b not in BACKENDS for b in config.backends):
        name = next(b for b in config.backends if b not in BACKENDS)
        raise OptcvError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    missing = [reason for b in config.backends if (reason := backend_unavailable(b))]
    if missing:
        raise OptcvError(missing[0])
    cifar = load_cifar10(data_dir, progress=False) if any(m in REFERENCE_MODELS for m in config.models) else None
    speeds = []
    for model in config.models:
        log(f"{model}: building or loading the model")
        if model in declared:
            source = declared_source(declared[model])
            images, accuracy = sample_inputs(declared[model].input, DECLARED_INPUTS), {"test_accuracy": None}
            listed = [b for b in config.backends if b in declared[model].backends]
            backends = list(runnable_backends(listed, source, partial(_left_out, log, model)))
        else:
            assert cifar is not None
            checkpoint, onnx_path = build_reference(model, cifar, default_cache_dir())
            source, images = ModelSource(checkpoint, onnx_path), cifar.test.images.numpy()
            accuracy, backends = reference_accuracy(checkpoint), list(config.backends)
        speeds.append(_model_speed(model, source, images, accuracy, backends, config, log))
    return HowFastResult(config, speeds, environment_info())


def _left_out(log: Any, model: str, exc: BackendCannotRun) -> None:
    log(f"{model}: {exc.backend} cannot run it, left out ({exc.reason})")


def _model_speed(model: str, source: ModelSource, images: np.ndarray, accuracy: dict[str, Any],
                 backends: Sequence[str], config: HowFastConfig, log: Any) -> ModelSpeed:
    with make_predictor("pytorch", source, 1) as probe:
        calls = calls_for(seconds_per_call(partial(probe.predict, images[:1]), calls=5), config)
    bench_config = BenchConfig(n_single=calls, chunk=max(1, calls // 10), warmup=min(200, calls),
                               batch_sizes=(config.batch_size,), batched_images=max(4, calls // 8) * 8,
                               calibration_calls=min(300, calls))
    log(f"{model}: timing {', '.join(backends)} ({calls} single-image calls each, batch {config.batch_size})")
    result = run_bench({b: tuned_candidates(b, source) for b in backends}, images, bench_config, model=model)
    limits = limits_of_source(result, source, images)
    return ModelSpeed(model, accuracy, result.to_dict(), limits.to_dict())
