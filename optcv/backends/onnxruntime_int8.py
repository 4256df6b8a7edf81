"""fp32 ONNX → int8 ONNX: ONNX Runtime's static QDQ quantisation, per channel, calibrated on real images.

The quantised model sits beside its fp32 source (`model.onnx` → `model.int8.onnx`), carries the source's
metadata plus the quantisation settings and the source's SHA-256, and is read by the `onnxruntime-int8`
backend. On a CPU without VNNI, u8s8 kernels can saturate their 16-bit intermediate sums (ONNX Runtime's
documented caveat; on AVX2 without VNNI it cost ~3 accuracy points here), so weights use 7 bits there
(`reduce_range`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optcv._io import atomic_path, sha256_file
from optcv.backends.base import check_input
from optcv.backends.onnx_export import INPUT_NAME, read_onnx_metadata
from optcv.data import load_cifar10, stratified_subset
from optcv.declared.config import InputSpec
from optcv.env import isa_flags
from optcv.errors import BackendCannotRun, OptcvError, first_line

INT8_SUFFIX = ".int8.onnx"


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """A library logger silenced for a block, and its level given back after."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def int8_path(onnx_path: str | Path) -> Path:
    """Where the quantised model of `onnx_path` lives: `model.onnx` → `model.int8.onnx`."""
    path = Path(onnx_path)
    return path.with_name(path.name.removesuffix(".onnx") + INT8_SUFFIX)


def has_vnni() -> bool:
    return any(flag in isa_flags() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


@dataclass(frozen=True)
class QuantizeSettings:
    calibration_images: int = 512
    per_channel: bool = True
    calibrate_method: str = "MinMax"  # or "Entropy", "Percentile"
    batch_size: int = 32
    reduce_range: bool | None = None  # None: only where the CPU lacks VNNI
    # Nodes left in fp32, by kind: "depthwise" (grouped convolutions, whose per-tensor activation ranges
    # differ most between channels), "first" (the first convolution), "last" (the classifier's last layer).
    keep_fp32: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keep_fp32) - set(KEEP_FP32_KINDS))
        if unknown:
            raise OptcvError(f"unknown node kind {unknown[0]!r} to keep in fp32: choose from "
                             f"{', '.join(KEEP_FP32_KINDS)}")

    def resolved_reduce_range(self) -> bool:
        return (not has_vnni()) if self.reduce_range is None else self.reduce_range


KEEP_FP32_KINDS = ("depthwise", "first", "last")


def nodes_kept_fp32(model: Any, kinds: tuple[str, ...]) -> list[str]:
    """The names of `model`'s nodes (an onnx.ModelProto) of the given kinds."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    names: list[str] = []
    if "depthwise" in kinds:
        names += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if "first" in kinds and convs:
        names.append(convs[0].name)
    if "last" in kinds:
        names += [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
    return sorted(set(names))


def _batches(images: np.ndarray, batch_size: int, name: str) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(images), batch_size):
        yield {name: images[start:start + batch_size]}


def quantize_onnx(onnx_path: str | Path, calibration_images: np.ndarray, out_path: str | Path | None = None,
                  settings: QuantizeSettings = QuantizeSettings(), input_spec: InputSpec | None = None,
                  input_name: str = INPUT_NAME) -> Path:
    """Write the int8 QDQ model of `onnx_path`, calibrated on `calibration_images` (uint8, N×3×32×32; or a
    declared model's inputs, `input_spec`, fed to its input `input_name`)."""
    import onnx
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedByRuntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process


    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path is not None else int8_path(onnx_path)
    metadata = read_onnx_metadata(onnx_path)
    images = check_input(calibration_images, input_spec)
    if settings.calibrate_method not in CalibrationMethod.__members__:
        raise OptcvError(f"unknown calibration method {settings.calibrate_method!r}: choose from "
                         f"{', '.join(CalibrationMethod.__members__)}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = _batches(images, settings.batch_size, input_name)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    record = {**asdict(settings), "reduce_range": settings.resolved_reduce_range(),
              "calibration_images": len(images), "format": "QDQ", "activations": "QUInt8", "weights": "QInt8"}
    with tempfile.TemporaryDirectory(prefix="optcv-quantize-") as tmp, atomic_path(out_path) as target:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            with _quiet("onnxruntime.quantization.shape_inference"):  # it logs a traceback, then goes on
                quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
            kept = nodes_kept_fp32(onnx.load(str(prepared)), settings.keep_fp32)
            record["nodes_kept_fp32"] = len(kept)
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=settings.per_channel, reduce_range=record["reduce_range"],
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod[settings.calibrate_method],
                            nodes_to_exclude=kept)
        except (NotImplementedByRuntime, InvalidGraph) as exc:  # no kernel to calibrate with, at the model's types
            raise BackendCannotRun("onnxruntime-int8", str(onnx_path), first_line(exc)) from exc
        except Exception as exc:
            raise OptcvError(f"ONNX Runtime could not quantise {onnx_path}: {first_line(exc)}") from exc
        proto = onnx.load(str(target))
        del proto.metadata_props[:]
        extra = {"quantization": json.dumps(record), "source_onnx_sha256": sha256_file(onnx_path)}
        for key, value in {**_raw_metadata(metadata), **extra}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(target))
    return out_path


def _raw_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def calibration_images(data_dir: str | Path | None, count: int, progress: bool = False) -> np.ndarray:
    """A seeded, stratified subset of the *training* split: the test split stays unseen by calibration."""
    if count < 1:
        raise OptcvError(f"calibration needs at least 1 image, got {count}")
    train = load_cifar10(data_dir, progress=progress).train
    return stratified_subset(train, min(count, len(train)), seed=0).images.numpy()


def quantize_from_data(onnx_path: str | Path, data_dir: str | Path | None,
                       settings: QuantizeSettings = QuantizeSettings(), out_path: str | Path | None = None,
                       progress: bool = False) -> Path:
    """`quantize_onnx` calibrated on training images from `data_dir`."""
    images = calibration_images(data_dir, settings.calibration_images, progress)
    return quantize_onnx(onnx_path, images, out_path, settings)
