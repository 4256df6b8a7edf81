"""What this machine allows: its fp32 GEMM peak and each runtime's per-call overhead, measured in the run.

Efficiency is stated against the hardware, as nanoGPT's `estimate_mfu` states it against a GPU's peak: the
multiply-accumulates a backend achieves per second over the most this machine's best fp32 matrix multiply
reaches at the same thread count (torch.mm on square matrices, MKL/oneDNN). These VMs do not publish their
clock or FMA ports, so the peak is measured, not looked up, and the measurement is the stated source.

A backend is *overhead-bound* on a model when its fixed per-call cost (the same runtime running a model that
computes nothing) exceeds the time the model's MACs need at that peak: making kernels faster cannot help it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optcv.backends.base import all_closed
from optcv.backends.onnx_export import export_onnx
from optcv.backends.onnxruntime_int8 import int8_path
from optcv.data import IMAGE_SHAPE
from optcv.errors import OptcvError
from optcv.measure.latency import time_interleaved
from optcv.runtime import ModelSource, make_predictor
from optcv.torch_settings import torch_settings
from optcv.training.models import Checkpoint, IdentityNetConfig, count_macs, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class GemmPeak:
    threads: int
    size: int
    gmac_per_s: float  # median over repeats
    gmac_per_s_min: float
    gmac_per_s_max: float
    repeats: int

    @property
    def source(self) -> str:
        return (f"torch.mm fp32 {self.size}x{self.size}, {self.threads} thread(s), median of {self.repeats} "
                f"(range {self.gmac_per_s_min:.0f}–{self.gmac_per_s_max:.0f} GMAC/s)")


def measure_gemm_peak(threads: int, size: int = 1024, repeats: int = 7, min_seconds: float = 0.05) -> GemmPeak:
    """The fp32 multiply-accumulates per second a large square matrix product reaches here."""
    if threads < 1 or size < 16 or repeats < 1:
        raise ValueError(f"need threads >= 1, size >= 16, repeats >= 1; got {threads}, {size}, {repeats}")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    rates = []
    with torch_settings(threads=threads), torch.inference_mode():
        torch.mm(a, b, out=out)  # warm-up: kernels chosen, pages touched
        for _ in range(repeats):
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < min_seconds or calls == 0:
                torch.mm(a, b, out=out)
                calls += 1
            rates.append(calls * size ** 3 / elapsed / 1e9)
    return GemmPeak(threads, size, float(np.median(rates)), float(min(rates)), float(max(rates)), repeats)


@dataclass(frozen=True)
class Efficiency:
    """One backend on one model at one batch size, against the machine's limits."""
    backend: str
    threads: int
    macs_per_image: int
    us_per_image: float
    achieved_gmac_per_s: float
    peak_fraction: float  # of the measured GEMM peak at the same thread count
    compute_floor_us: float  # per call: the call's MACs at the peak
    overhead_us: float | None  # per call: the runtime running a model that computes nothing
    batch_size: int

    @property
    def overhead_bound(self) -> bool | None:
        return None if self.overhead_us is None else self.overhead_us > self.compute_floor_us


def efficiency(macs_per_image: int, seconds_per_call: float, batch_size: int, peak: GemmPeak,
               overhead_us: float | None = None, backend: str = "") -> Efficiency:
    if seconds_per_call <= 0 or batch_size < 1 or macs_per_image < 0:
        raise ValueError("need a positive call time, a batch size >= 1 and a MAC count >= 0")
    achieved = macs_per_image * batch_size / seconds_per_call / 1e9
    floor_us = macs_per_image * batch_size / (peak.gmac_per_s * 1e3)
    return Efficiency(backend, peak.threads, macs_per_image, seconds_per_call * 1e6 / batch_size, achieved,
                      achieved / peak.gmac_per_s, floor_us, overhead_us, batch_size)


def identity_model(folder: str | Path, check_images: np.ndarray) -> tuple[Path, Path]:
    """(checkpoint, ONNX file) of the model that computes nothing, written into `folder`."""
    import shutil


    folder = Path(folder)
    checkpoint, onnx_path = folder / "identity.pt", folder / "identity.onnx"
    if not (checkpoint.is_file() and onnx_path.is_file()):
        save_checkpoint(checkpoint, Checkpoint(IdentityNetConfig(), {}, info={"purpose": "per-call overhead"}))
        export_onnx(checkpoint, onnx_path, check_images=check_images[:8])
    twin = int8_path(onnx_path)
    if not twin.is_file():  # nothing in it to quantise: the int8 backend's overhead is its runtime's own
        shutil.copyfile(onnx_path, twin)
    return checkpoint, onnx_path


def runtime_overheads(backends: Sequence[str], threads: int, images: np.ndarray, folder: str | Path,
                      calls: int = 2000) -> dict[str, float]:
    """Each backend's median µs per batch-1 call of the identity model, timed interleaved."""
    source = ModelSource(*identity_model(folder, images))
    with all_closed([make_predictor(backend, source, threads) for backend in backends]) as predictors:
        samples = time_interleaved(predictors, images, calls, chunk=max(1, calls // 10), warmup=min(200, calls))
    return {p.name: float(np.median(s)) for p, s in zip(predictors, samples, strict=True)}


@dataclass
class Limits:
    """A bench result set against the machine: peaks and overheads per thread count, efficiency per row."""
    model: str
    macs_per_image: int
    peaks: dict[int, GemmPeak]
    overheads_us: dict[int, dict[str, float]]  # threads → backend → µs per batch-1 call
    rows: list[Efficiency]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "macs_per_image": self.macs_per_image,
                "peaks": {str(t): {**asdict(p), "source": p.source} for t, p in self.peaks.items()},
                "overheads_us": {str(t): o for t, o in self.overheads_us.items()},
                "rows": [{**asdict(r), "overhead_bound": r.overhead_bound} for r in self.rows]}


def machine_limits(result: Any, macs_per_image: int, images: np.ndarray, folder: str | Path) -> Limits:
    """Efficiency of every backend of an `optcv.measure.latency` result (batch 1 and batched), against the GEMM peak
    and the runtime's overhead measured now at the thread count each backend ran with."""
    runs = [(name, r.settings.get("threads") or 1, 1, r.latency.median_us * 1e-6)
            for name, r in result.backends.items()]
    runs += [(name, t["settings"].get("threads") or 1, batch, batch / t["images_per_s"])
             for name, r in result.backends.items() for batch, t in r.throughput.items()]
    thread_counts = sorted({threads for _, threads, _, _ in runs})
    peaks = {t: measure_gemm_peak(t) for t in thread_counts}
    overheads = {t: runtime_overheads(list(result.backends), t, images, folder) for t in thread_counts}
    rows = [efficiency(macs_per_image, seconds, batch, peaks[threads], overheads[threads].get(name), name)
            for name, threads, batch, seconds in runs]
    return Limits(result.model, macs_per_image, peaks, overheads, rows)


def limits_of_source(result: Any, source: Any, images: np.ndarray) -> Limits:
    """`machine_limits` for a bench result of the model in `source` (an optcv.runtime.ModelSource)."""
    import tempfile


    if source.declared is not None:  # a user's model: its own input, and optcv's images for the identity model
        spec = source.declared.input_spec
        macs = count_macs(source.declared.build_inference(), (1, *spec.shape), getattr(torch, spec.dtype))
        images = np.random.default_rng(0).integers(0, 256, (64, *IMAGE_SHAPE), dtype=np.uint8)
    elif source.checkpoint is None:
        raise OptcvError("the limits need the model's checkpoint (.pt) beside its ONNX file, to count its MACs")
    else:
        macs = count_macs(load_checkpoint(source.checkpoint).build())
    with tempfile.TemporaryDirectory(prefix="optcv-limits-") as folder:
        return machine_limits(result, macs, images, folder)
