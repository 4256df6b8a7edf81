"""The backend registry: names → factories, their options and availability, and the model files a user names.

Every predictor (optcv.backends) takes the same input, uint8 images shaped (N, 3, 32, 32) in RGB order as a
NumPy array, applies the model's own normalisation, and returns float32 logits (N, classes). A new runtime is
one module in optcv.backends and one entry in BACKENDS; `optcv evaluate`, `optcv bench`, `optcv how-fast`, the
gate and the benchmark suite then reach it by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optcv._io import atomic_path, sha256_file, write_text
from optcv.backends.base import InferenceSource, Predictor
from optcv.backends.onnx_export import export_declared, read_onnx_metadata
from optcv.backends.onnxruntime import OrtPredictor
from optcv.backends.onnxruntime_int8 import QuantizeSettings, int8_path, quantize_onnx
from optcv.backends.pytorch import TorchPredictor
from optcv.cache import KEY_FILE, mark_used
from optcv.data import default_cache_dir
from optcv.declared.build import DeclaredNet, build_declared, class_names, onnx_classes
from optcv.declared.config import DeclaredModel, InputSpec
from optcv.declared.inputs import sample_inputs
from optcv.env import package_versions, usable_cores
from optcv.errors import OPTIONAL_MODULES, BackendCannotRun, MissingDependency, OptcvError
from optcv.training.models import load_checkpoint


@dataclass(frozen=True)
class ModelSource:
    """What a predictor is built from: a checkpoint (.pt) and/or its ONNX export; or a user's declared model
    (optcv.declared): its built net (None for an ONNX-only one), its ONNX file, its input and classes."""

    checkpoint: Path | None = None
    onnx: Path | None = None
    declared: DeclaredNet | None = None
    input_spec: InputSpec | None = None  # None: optcv's own uint8 (N, 3, 32, 32) images
    classes: tuple[str, ...] = ()
    name: str | None = None  # a declared model's name
    cannot_run: tuple[tuple[str, str], ...] = ()  # (backend, why) found while preparing a declared model


def _torch_source(source: ModelSource, backend: str) -> InferenceSource:
    if source.declared is not None:
        return source.declared
    if source.checkpoint is None:
        if source.input_spec is not None:
            raise OptcvError(f"the {backend} backend needs PyTorch code, and declared model {source.name!r} is an "
                             "ONNX file; declare a factory to time PyTorch")
        raise OptcvError(f"the {backend} backend needs the checkpoint (.pt) the ONNX model was exported from")
    return load_checkpoint(source.checkpoint)


def _torch_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    # oneDNN off was measured faster only on the 32×32 reference nets. A declared model gets PyTorch's stock
    # setting, oneDNN on: at 224×224, batch 1, one thread, MobileNetV3-large took 88 ms with it off and 25 ms on,
    # ResNet-50 192 and 165 ms (2 vCPU AMD EPYC, torch 2.14.1).
    options = {"mkldnn": source.declared is not None, **options}
    return TorchPredictor(_torch_source(source, "pytorch"), threads, **options)


def _ort_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    if source.onnx is None:
        raise OptcvError("the onnxruntime backend needs an ONNX model: run `optcv export CHECKPOINT -o model.onnx`")
    return OrtPredictor(source.onnx, threads, input_spec=source.input_spec, classes=source.classes, **options)


def _ort_int8_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    if source.onnx is None:
        raise OptcvError("the onnxruntime-int8 backend needs the fp32 ONNX model its int8 twin was made from")
    path = int8_path(source.onnx)
    if not path.is_file():
        raise OptcvError(f"{path} does not exist: quantise the model with `optcv export CHECKPOINT --int8`")
    return OrtPredictor(path, threads, name="onnxruntime-int8", input_spec=source.input_spec, classes=source.classes,
                        **options)


def _torch_compile_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    from optcv.backends.torch_compile import CompiledTorchPredictor  # lazy: imports torch._dynamo and inductor

    return CompiledTorchPredictor(_torch_source(source, "torch-compile"), threads, **options)


def _openvino_backend(source: ModelSource, threads: int, **options: Any) -> Predictor:
    from optcv.backends.openvino import OpenVinoPredictor  # lazy: an optional extra

    if source.onnx is None:
        raise OptcvError("the openvino backend reads the ONNX model: run `optcv export CHECKPOINT -o model.onnx`")
    return OpenVinoPredictor(source.onnx, threads, input_spec=source.input_spec, classes=source.classes, **options)


@dataclass(frozen=True)
class Backend:
    """One runtime in the registry: how to make its predictor and what optcv needs to know about it."""

    make: Callable[..., Predictor]
    options: tuple[dict[str, Any], ...] = ({},)  # settings besides threads that calibration (optcv bench) tries
    optional_module: str | None = None  # an optional runtime's module (optcv.errors.OPTIONAL_MODULES: its extra)
    compiles: bool = False  # prepares for seconds per batch size: left out of the default sets that time all


BACKENDS: dict[str, Backend] = {
    "pytorch": Backend(_torch_backend, options=({"mkldnn": False}, {"mkldnn": True})),
    "onnxruntime": Backend(_ort_backend),
    "onnxruntime-int8": Backend(_ort_int8_backend),
    "torch-compile": Backend(_torch_compile_backend, compiles=True),
    "openvino": Backend(_openvino_backend, optional_module="openvino"),
}
DEFAULT_BACKENDS = ("pytorch", "onnxruntime")
NON_COMPILING_BACKENDS = tuple(name for name, backend in BACKENDS.items() if not backend.compiles)


def backend_unavailable(backend: str) -> str | None:
    """Why `backend` cannot run here (its optional runtime is not installed), or None."""
    module = BACKENDS[backend].optional_module if backend in BACKENDS else None
    if module is not None and importlib.util.find_spec(module) is None:
        return str(MissingDependency(f"the {backend} backend", *OPTIONAL_MODULES[module]))
    return None


def make_predictor(backend: str, source: ModelSource, threads: int | None = None, **options: Any) -> Predictor:
    if backend not in BACKENDS:
        raise OptcvError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    known = dict(source.cannot_run)
    if backend in known:
        raise BackendCannotRun(backend, source.name or "the model", known[backend])
    return BACKENDS[backend].make(source, threads or usable_cores(), **options)


def runnable_backends(backends: Sequence[str], source: ModelSource,
                      report: Callable[[BackendCannotRun], None]) -> tuple[str, ...]:
    """The backends of `backends` that can run `source`'s model, each built once to find out; every one that
    cannot is reported and left out, so the others still run. None left is an error."""
    found = []
    for backend in backends:
        try:
            make_predictor(backend, source, 1).close()
        except BackendCannotRun as exc:
            report(exc)
        else:
            found.append(backend)
    if not found:
        raise OptcvError(f"none of {', '.join(backends)} can run {source.name or 'the model'}; declare a backend "
                         "that can")
    return tuple(found)


def candidate_predictors(backend: str, source: ModelSource, threads: int | None = None) -> list[Predictor]:
    """Every setting worth trying for `backend` on this machine: 1 thread and all cores (or the
    given count), times the backend's own options."""
    counts = [threads] if threads else sorted({1, usable_cores()})
    return [make_predictor(backend, source, n, **options)
            for n in counts for options in BACKENDS[backend].options]


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
    recorded = read_onnx_metadata(onnx).get("source_checkpoint_sha256")
    if recorded is not None and recorded != sha256_file(checkpoint):
        raise OptcvError(f"{onnx} is not the export of {checkpoint} (its metadata names another checkpoint); "
                         f"export it again with `optcv export {checkpoint} -o {onnx}`")


DECLARED_AREA = "declared-models"


def declared_source(model: DeclaredModel, cache_dir: Path | None = None) -> ModelSource:
    """A declared model ready for every backend it lists: a factory's net built and exported to ONNX (an ONNX
    file copied), and for onnxruntime-int8 quantised on its sample inputs; all kept in the cache under a key of
    the declaration, the weights (or file) and the factory's code, so that an edited forward is exported again.
    Nothing is written into the user's repository."""
    net = build_declared(model) if model.factory is not None else None
    if net is None:
        assert model.onnx is not None
        content, classes = sha256_file(model.onnx), class_names(model, onnx_classes(model))
    else:
        content, classes = f"{net.weights_digest()} {net.code_digest}", net.classes
    material = json.dumps({"declaration": dataclasses.asdict(model), "content": content,
                           "versions": package_versions()}, sort_keys=True, default=str)
    folder = Path(cache_dir or default_cache_dir()) / DECLARED_AREA / \
        f"{model.name}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"
    onnx, no_int8 = folder / "model.onnx", folder / INT8_CANNOT_RUN
    if onnx.is_file() and (int8_path(onnx).is_file() or no_int8.is_file() or "onnxruntime-int8" not in model.backends):
        mark_used(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        if net is not None and not onnx.is_file():
            export_declared(net, onnx)
        elif model.onnx is not None and not onnx.is_file():
            with atomic_path(onnx) as tmp:
                shutil.copyfile(model.onnx, tmp)
        if "onnxruntime-int8" in model.backends:
            try:
                _quantise_declared(model, onnx)
            except BackendCannotRun as exc:
                write_text(no_int8, exc.reason)
        (folder / KEY_FILE).write_text(material)
    cannot_run = (("onnxruntime-int8", no_int8.read_text()),) if no_int8.is_file() else ()
    return ModelSource(onnx=onnx, declared=net, input_spec=model.input, classes=classes, name=model.name,
                       cannot_run=cannot_run)


INT8_CANNOT_RUN = "int8-cannot-run.txt"  # why ONNX Runtime could not quantise a declared model, when it could not


def _quantise_declared(model: DeclaredModel, onnx: Path) -> None:
    import onnx as onnx_lib

    settings = QuantizeSettings()
    graph = onnx_lib.load(str(onnx), load_external_data=False).graph
    quantize_onnx(onnx, sample_inputs(model.input, settings.calibration_images), settings=settings,
                  input_spec=model.input, input_name=graph.input[0].name)
