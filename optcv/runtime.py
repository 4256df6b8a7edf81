"""One predictor interface, one backend per runtime.

Every predictor takes the same input, uint8 images shaped (N, 3, 32, 32) in RGB order as a NumPy array,
applies the model's own normalisation, and returns float32 logits (N, classes). New backends register a
factory in BACKENDS and become available to `optcv evaluate`, `optcv bench` and the benchmark suite.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from optcv.data import IMAGE_SHAPE
from optcv.errors import OptcvError, first_line
from optcv.models import Checkpoint, load_checkpoint


class Predictor(Protocol):
    name: str
    classes: tuple[str, ...]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, 32, 32) → float32 logits (N, classes)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The settings that shape its speed: threads, optimisation level, versions."""
        ...

    def close(self) -> None:
        """Give back any process-wide setting it changed (PyTorch's thread count, oneDNN flag)."""
        ...


def check_images(images: Any) -> np.ndarray:
    """Return `images` as a uint8 (N, 3, 32, 32) array, or raise a clear error before anything runs."""
    if isinstance(images, torch.Tensor):
        images = images.numpy()
    if not isinstance(images, np.ndarray):
        raise OptcvError(f"images must be a NumPy array, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] == 0:
        hint = " (channels last? use images.transpose(0, 3, 1, 2))" if images.shape[-1:] == (3,) else ""
        raise OptcvError(f"images must be uint8 shaped (N, 3, 32, 32) with N >= 1, "
                         f"got {images.dtype} {tuple(images.shape)}{hint}")
    return images


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ModelSource:
    """What a predictor was built from: a checkpoint (.pt) and/or its ONNX export."""

    checkpoint: Path | None = None
    onnx: Path | None = None


_found_torch_settings: tuple[int, bool] | None = None  # the process's, before the first predictor set its own
_torch_settings_users: set[int] = set()


def use_torch_settings(user: object, threads: int, mkldnn: bool | None = None) -> None:
    """Give PyTorch `user`'s thread count (and oneDNN flag) where they differ: a change only when another
    predictor ran in between, never a flip per call. The settings found are restored when the last user
    releases them (`release_torch_settings`)."""
    global _found_torch_settings
    if _found_torch_settings is None:
        _found_torch_settings = (torch.get_num_threads(), bool(torch.backends.mkldnn.enabled))
    _torch_settings_users.add(id(user))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if mkldnn is not None and torch.backends.mkldnn.enabled != mkldnn:
        torch.backends.mkldnn.enabled = mkldnn  # type: ignore[assignment]


def release_torch_settings(user: object) -> None:
    global _found_torch_settings
    _torch_settings_users.discard(id(user))
    if not _torch_settings_users and _found_torch_settings is not None:
        torch.set_num_threads(_found_torch_settings[0])
        torch.backends.mkldnn.enabled = _found_torch_settings[1]  # type: ignore[assignment]
        _found_torch_settings = None


class TorchPredictor:
    """PyTorch eager, at its best for inference: eval mode, no autograd, a set thread count.

    oneDNN (mkldnn) convolutions cost more in per-call set-up than they save on a 32x32 image at batch 1
    on these nets (see ../shared/NOTES.md and `optcv bench`), so they are off by default; pass
    mkldnn=True to measure PyTorch's stock setting.
    """

    def __init__(self, checkpoint: Checkpoint, threads: int | None = None, mkldnn: bool = False,
                 channels_last: bool = False, name: str = "pytorch"):
        self.name = name
        self.classes = checkpoint.classes
        self.threads = threads or default_threads()
        self.mkldnn = mkldnn
        self.channels_last = channels_last
        self.model = checkpoint.build_inference()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        use_torch_settings(self, self.threads, self.mkldnn)
        with torch.inference_mode():
            x = torch.from_numpy(images)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).numpy()

    def close(self) -> None:
        release_torch_settings(self)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": f"torch {torch.__version__}", "threads": self.threads,
                "mkldnn": self.mkldnn, "channels_last": self.channels_last, "mode": "eager, eval, inference_mode"}


GRAPH_LEVELS = ("disable", "basic", "extended", "all")


class OrtPredictor:
    """ONNX Runtime on the CPU execution provider, with explicit session options."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None, graph_optimization: str = "all",
                 spinning: bool = True, name: str = "onnxruntime"):
        import onnxruntime as ort

        from optcv.export import INPUT_NAME, OUTPUT_NAME, read_onnx_metadata

        metadata = read_onnx_metadata(onnx_path)
        if graph_optimization not in GRAPH_LEVELS:
            raise OptcvError(f"unknown graph optimisation level {graph_optimization!r}: "
                             f"choose from {', '.join(GRAPH_LEVELS)}")
        self.name = name
        self.classes = tuple(metadata.get("classes") or ())
        self.threads = threads or default_threads()
        self.graph_optimization = graph_optimization
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # ORT_PARALLEL is 3-5x slower at batch 1
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        options.log_severity_level = 3
        # Worker threads spin between calls by default, which buys latency with a busy core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.spinning = spinning
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise OptcvError(f"ONNX Runtime cannot load {onnx_path}: {first_line(exc)}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise OptcvError(f"{onnx_path} takes inputs {inputs}, not optcv's single {INPUT_NAME!r}; "
                             "export it with `optcv export`")
        self._input, self._outputs = INPUT_NAME, [OUTPUT_NAME]
        self._version = ort.__version__

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        return self.session.run(self._outputs, {self._input: images})[0]

    def close(self) -> None:
        pass  # its threads are the session's own; nothing process-wide to give back

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": f"onnxruntime {self._version}", "threads": self.threads,
                "graph_optimization": self.graph_optimization, "spinning": self.spinning,
                "execution_mode": "sequential", "provider": "CPUExecutionProvider"}


def _torch_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    if source.checkpoint is None:
        raise OptcvError("the pytorch backend needs the checkpoint (.pt) the ONNX model was exported from")
    return TorchPredictor(load_checkpoint(source.checkpoint), threads, **options)


def _ort_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    if source.onnx is None:
        raise OptcvError("the onnxruntime backend needs an ONNX model: run `optcv export CHECKPOINT -o model.onnx`")
    return OrtPredictor(source.onnx, threads, **options)


def _ort_int8_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    from optcv.quantize import int8_path

    if source.onnx is None:
        raise OptcvError("the onnxruntime-int8 backend needs the fp32 ONNX model its int8 twin was made from")
    path = int8_path(source.onnx)
    if not path.is_file():
        raise OptcvError(f"{path} does not exist: quantise the model with `optcv export CHECKPOINT --int8`")
    return OrtPredictor(path, threads, name="onnxruntime-int8", **options)


def _torch_compile_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    from optcv.compiled import CompiledTorchPredictor

    if source.checkpoint is None:
        raise OptcvError("the torch-compile backend needs the checkpoint (.pt) the ONNX model was exported from")
    return CompiledTorchPredictor(load_checkpoint(source.checkpoint), threads, **options)


def _openvino_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    from optcv.openvino_predictor import OpenVinoPredictor

    if source.onnx is None:
        raise OptcvError("the openvino backend reads the ONNX model: run `optcv export CHECKPOINT -o model.onnx`")
    return OpenVinoPredictor(source.onnx, threads, **options)


BACKENDS: dict[str, Callable[..., Predictor]] = {
    "pytorch": _torch_backend,
    "onnxruntime": _ort_backend,
    "onnxruntime-int8": _ort_int8_backend,
    "torch-compile": _torch_compile_backend,
    "openvino": _openvino_backend,
}
# Settings besides the thread count that `optcv bench` tries for each backend, keeping the fastest.
BACKEND_OPTIONS: dict[str, list[dict[str, Any]]] = {
    "pytorch": [{"mkldnn": False}, {"mkldnn": True}],
    "onnxruntime": [{}],
    "onnxruntime-int8": [{}],
    "openvino": [{}],
}
DEFAULT_BACKENDS = ("pytorch", "onnxruntime")


# Backends whose runtime is an optional extra: the package to import, and how to install it.
OPTIONAL_BACKENDS: dict[str, tuple[str, str]] = {"openvino": ("openvino", "pip install 'optcv[openvino]'")}


def backend_unavailable(backend: str) -> str | None:
    """Why `backend` cannot run here (its optional runtime is not installed), or None."""
    import importlib.util

    if backend in OPTIONAL_BACKENDS:
        module, install = OPTIONAL_BACKENDS[backend]
        if importlib.util.find_spec(module) is None:
            return f"the {backend} backend needs {module}, which is not installed: {install}"
    return None


def make_predictor(backend: str, source: ModelSource, threads: int | None = None, **options: Any) -> Predictor:
    if backend not in BACKENDS:
        raise OptcvError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    return BACKENDS[backend](source, threads or default_threads(), **options)


def candidate_predictors(backend: str, source: ModelSource, threads: int | None = None) -> list[Predictor]:
    """Every setting worth trying for `backend` on this machine: 1 thread and all cores (or the
    given count), times the backend's own options."""
    counts = [threads] if threads else sorted({1, default_threads()})
    return [make_predictor(backend, source, n, **options)
            for n in counts for options in BACKEND_OPTIONS.get(backend, [{}])]


def resolve_sources(paths: list[str | Path]) -> ModelSource:
    """Sort the model files a user named into a checkpoint and an ONNX model.

    Given only a checkpoint, its ONNX export beside it (same name, .onnx) is used when present;
    given only an ONNX model, the checkpoint beside it (same name, .pt) likewise. A pair whose ONNX metadata
    names another checkpoint (export records its SHA-256) is refused: its outputs would differ by design.
    """
    checkpoint = onnx = None
    for raw in paths:
        path = Path(raw)
        if path.suffix == ".onnx":
            onnx = path
        elif path.suffix in (".pt", ".pth"):
            checkpoint = path
        else:
            raise OptcvError(f"{path}: expected a checkpoint (.pt) or an ONNX model (.onnx)")
        if not path.is_file():
            raise OptcvError(f"model file {path} does not exist; check the path (optcv export writes the .onnx "
                             "beside its checkpoint)")
    if checkpoint is not None and onnx is None and checkpoint.with_suffix(".onnx").is_file():
        onnx = checkpoint.with_suffix(".onnx")
    if onnx is not None and checkpoint is None and onnx.with_suffix(".pt").is_file():
        checkpoint = onnx.with_suffix(".pt")
    if checkpoint is None and onnx is None:
        raise OptcvError("name a checkpoint (.pt), an ONNX model (.onnx), or both")
    if checkpoint is not None and onnx is not None:
        check_pair(checkpoint, onnx)
    return ModelSource(checkpoint, onnx)


def check_pair(checkpoint: Path, onnx: Path) -> None:
    """Refuse an ONNX model that is not the export of `checkpoint` (by the hash export wrote into it)."""
    from optcv._io import sha256_file
    from optcv.export import read_onnx_metadata

    recorded = read_onnx_metadata(onnx).get("source_checkpoint_sha256")
    if recorded is not None and recorded != sha256_file(checkpoint):
        raise OptcvError(f"{onnx} is not the export of {checkpoint} (its metadata names another checkpoint); "
                         f"export it again with `optcv export {checkpoint} -o {onnx}`")
