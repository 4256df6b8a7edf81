"""`optcv bench --search`: every setting worth trying for each backend, timed interleaved, and the fastest
per batch size kept beside the model (`<model>.settings.json`) for `optcv bench` and the report to use.

The grid is threads (1 and all cores) × each backend's own options. Within a backend and batch size, every
candidate is timed in rounds — one turn of about `turn_ms` per candidate per round, in a seeded random order
— so a slow spell of the machine falls on all of them alike; a candidate's figure is the median over rounds
of its per-turn median, with a bootstrap 95 % interval, µs per image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optcv._io import write_json
from optcv.backends.base import Predictor
from optcv.env import environment_info, fingerprint_differences, machine_fingerprint, same_machine
from optcv.env import usable_cores as default_threads
from optcv.errors import OptcvError
from optcv.runtime import ModelSource, candidate_predictors, make_predictor
from optcv.stats import bootstrap_median_ci

SEARCH_SCHEMA = "optcv-settings-search/1"
_ORT_OPTIONS = [{"graph_optimization": g, "spinning": s} for g in ("basic", "extended", "all") for s in (True, False)]
BACKEND_GRID: dict[str, list[dict[str, Any]]] = {
    "pytorch": [{"mkldnn": m, "channels_last": c} for m in (False, True) for c in (False, True)],
    "onnxruntime": _ORT_OPTIONS,
    "onnxruntime-int8": _ORT_OPTIONS,
    "openvino": [{"hint": h} for h in ("LATENCY", "THROUGHPUT")],
}


def search_grid(backend: str, cores: int | None = None) -> list[dict[str, Any]]:
    """Every candidate setting of `backend`: thread counts × its own options."""
    threads = sorted({1, cores or default_threads()})
    return [{"threads": t, **options} for t in threads for options in BACKEND_GRID.get(backend, [{}])]


@dataclass(frozen=True)
class SearchConfig:
    batch_sizes: tuple[int, ...] = (1, 64)
    rounds: int = 10
    turn_ms: float = 40.0
    warmup_ms: float = 100.0
    seed: int = 0


@dataclass(frozen=True)
class SettingTiming:
    backend: str
    batch_size: int
    settings: dict[str, Any]
    median_us_per_image: float
    ci_low_us: float
    ci_high_us: float
    rounds: int


@dataclass
class SearchResult:
    model: str
    config: SearchConfig
    timings: list[SettingTiming]
    environment: dict[str, Any] = field(default_factory=dict)

    def best(self) -> dict[str, dict[int, dict[str, Any]]]:
        """backend → batch size → the fastest settings (threads included)."""
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for t in sorted(self.timings, key=lambda t: t.median_us_per_image, reverse=True):
            out.setdefault(t.backend, {})[t.batch_size] = t.settings
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SEARCH_SCHEMA, "model": self.model, "config": asdict(self.config),
                "environment": self.environment,
                "best": {b: {str(k): v for k, v in per.items()} for b, per in self.best().items()},
                "timings": [asdict(t) for t in self.timings]}


def settings_path(source: ModelSource) -> Path:
    model = source.onnx or source.checkpoint
    if model is None:
        raise OptcvError("a settings search needs a model file")
    return model.with_name(model.stem + ".settings.json")


def _time_turn(predictor: Predictor, batches: Sequence[np.ndarray], calls: int) -> float:
    clock = time.perf_counter_ns
    out = []
    for i in range(calls):
        x = batches[i % len(batches)]
        t0 = clock()
        predictor.predict(x)
        out.append(clock() - t0)
    return float(np.median(out)) / 1000


def time_candidates(predictors: Sequence[Predictor], images: np.ndarray, batch_size: int, config: SearchConfig
                    ) -> list[np.ndarray]:
    """Per candidate, the per-round median µs per call: rounds of one turn each, in a random order."""
    batches = [images[i:i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)][:64]
    if not batches:
        raise OptcvError(f"batch size {batch_size} is larger than the {len(images)} images given")
    calls = []
    for predictor in predictors:
        per_call_us = max(_time_turn(predictor, batches, 3), 1.0)
        _time_turn(predictor, batches, max(1, int(config.warmup_ms * 1000 / per_call_us)))
        calls.append(max(1, int(config.turn_ms * 1000 / per_call_us)))
    rng = np.random.default_rng(config.seed)
    rounds: list[list[float]] = [[] for _ in predictors]
    for _ in range(config.rounds):
        for k in rng.permutation(len(predictors)):
            rounds[int(k)].append(_time_turn(predictors[int(k)], batches, calls[int(k)]))
    return [np.asarray(r) for r in rounds]


def run_search(source: ModelSource, backends: Sequence[str], images: np.ndarray, config: SearchConfig = SearchConfig(),
               model: str = "", cores: int | None = None, progress: bool = False) -> SearchResult:
    """Time every backend's grid at every batch size; the fastest per backend and batch size is `best()`."""
    from tqdm.auto import tqdm


    timings: list[SettingTiming] = []
    for backend in tqdm(list(backends), desc="search", unit="backend", disable=not progress or None):
        grid = search_grid(backend, cores)
        predictors = [make_predictor(backend, source, **settings) for settings in grid]
        try:
            for batch in config.batch_sizes:
                for settings, per_round in zip(grid, time_candidates(predictors, images, batch, config), strict=True):
                    low, high = bootstrap_median_ci(per_round, seed=config.seed)
                    timings.append(SettingTiming(backend, batch, settings, float(np.median(per_round)) / batch,
                                                 low / batch, high / batch, len(per_round)))
        finally:
            for predictor in predictors:
                predictor.close()
    return SearchResult(model, config, timings, {**environment_info(), "fingerprint": machine_fingerprint()})


def save_search(result: SearchResult, source: ModelSource) -> Path:
    return write_json(settings_path(source), result.to_dict())


def kept_settings(source: ModelSource) -> dict[str, list[dict[str, Any]]] | None:
    """The settings a search on this machine kept for each backend (distinct over batch sizes), or None when
    there is no search beside the model or it was made on another machine."""
    import json


    path = settings_path(source)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptcvError(f"{path} cannot be read ({exc}); delete it or run `optcv bench --search` again") from exc
    if saved.get("schema") != SEARCH_SCHEMA:
        raise OptcvError(f"{path} is not an {SEARCH_SCHEMA} file; delete it or run `optcv bench --search` again")
    if not same_machine(fingerprint_differences(saved.get("environment", {}), machine_fingerprint())):
        return None
    out: dict[str, list[dict[str, Any]]] = {}
    for backend, per_batch in saved["best"].items():
        for settings in per_batch.values():
            if settings not in out.setdefault(backend, []):
                out[backend].append(settings)
    return out


def tuned_candidates(backend: str, source: ModelSource, threads: int | None = None) -> list[Predictor]:
    """The settings a search kept for `backend` beside this model (on this machine), else the default
    candidates (1 and all cores × the backend's usual options): what `optcv bench` and `optcv run` time."""
    kept = kept_settings(source)
    if kept and backend in kept and threads is None:
        return [make_predictor(backend, source, **settings) for settings in kept[backend]]
    return candidate_predictors(backend, source, threads)
