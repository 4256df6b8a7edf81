"""`optcv how-fast`: every backend on every reference model, against this machine's limits, in one run.

For each reference model (optcv.measure.reference, built or taken from the cache) the backends are timed the way
`optcv bench` times them — single-image latency interleaved, batched throughput, each backend calibrated to
its fastest setting (or the settings a `--search` kept) — then set against the fp32 GEMM peak and each
runtime's per-call overhead measured in the same run (optcv.measure.limits). The work per call differs by ~850×
between the models, so the number of timed calls is scaled to a time budget per backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from optcv.data import default_cache_dir, load_cifar10
from optcv.env import environment_info
from optcv.errors import OptcvError
from optcv.measure.latency import BenchConfig, run_bench, seconds_per_call
from optcv.measure.limits import limits_of_source
from optcv.measure.reference import REFERENCE_MODELS, build_reference, reference_accuracy
from optcv.measure.search import tuned_candidates
from optcv.runtime import BACKENDS, NON_COMPILING_BACKENDS, ModelSource, backend_unavailable, make_predictor

HOW_FAST_SCHEMA = "optcv-how-fast/1"


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
                 log: Any = lambda _m: None) -> HowFastResult:

    unknown = [m for m in config.models if m not in REFERENCE_MODELS]
    if unknown:
        raise OptcvError(f"unknown reference model {unknown[0]}: choose from {', '.join(REFERENCE_MODELS)}")
    if any(b not in BACKENDS for b in config.backends):
        name = next(b for b in config.backends if b not in BACKENDS)
        raise OptcvError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    missing = [reason for b in config.backends if (reason := backend_unavailable(b))]
    if missing:
        raise OptcvError(missing[0])
    cifar = load_cifar10(data_dir, progress=False)
    images = cifar.test.images.numpy()
    speeds = []
    for model in config.models:
        log(f"{model}: building or loading the reference model")
        checkpoint, onnx_path = build_reference(model, cifar, default_cache_dir())
        source = ModelSource(checkpoint, onnx_path)
        with make_predictor("pytorch", source, 1) as probe:
            calls = calls_for(seconds_per_call(partial(probe.predict, images[:1]), calls=5), config)
        bench_config = BenchConfig(n_single=calls, chunk=max(1, calls // 10), warmup=min(200, calls),
                                   batch_sizes=(config.batch_size,), batched_images=max(4, calls // 8) * 8,
                                   calibration_calls=min(300, calls))
        log(f"{model}: timing {', '.join(config.backends)} ({calls} single-image calls each, batch "
            f"{config.batch_size})")
        backends = {b: tuned_candidates(b, source) for b in config.backends}
        result = run_bench(backends, images, bench_config, model=model)
        limits = limits_of_source(result, source, images)
        speeds.append(ModelSpeed(model, reference_accuracy(checkpoint), result.to_dict(), limits.to_dict()))
    return HowFastResult(config, speeds, environment_info())
