"""Checkpoint → ONNX: export, check, compare numerically with PyTorch, write atomically with metadata."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optcv._io import atomic_path, interrupts_deferred, sha256_file
from optcv.declared.build import DeclaredNet, describe_input
from optcv.declared.inputs import sample_inputs
from optcv.env import package_versions
from optcv.errors import OptcvError, first_line
from optcv.training.models import load_checkpoint

DEFAULT_OPSET = 20  # torch 2.14's dynamo exporter default; ONNX Runtime >= 1.16 runs it
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_ATOL = 1e-4  # fp32 logits of these nets agree to ~1e-6; 1e-4 leaves room for other CPUs' kernels


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    max_abs_diff: float
    tolerance: float
    metadata: dict[str, str]


def export_onnx(
    checkpoint_path: str | Path,
    out_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    check_images: np.ndarray | None = None,
) -> ExportResult:
    """Export a checkpoint to ONNX with a dynamic batch dimension and uint8 (N, 3, 32, 32) input.

    The graph includes the checkpoint's normalisation, so ONNX Runtime and PyTorch take the same input.
    After export: onnx.checker, shape inference, and ONNX Runtime's logits compared with PyTorch's on
    `check_images` (random images when None); a difference above `atol` fails the export and writes nothing.
    """
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    metadata = {
        "optcv_version": package_versions()["optcv"],
        "arch": checkpoint.arch,
        "classes": json.dumps(list(checkpoint.classes)),
        "normalization": json.dumps({"mean": list(checkpoint.normalization.mean),
                                     "std": list(checkpoint.normalization.std)}),
        "input": "uint8 NCHW (N, 3, 32, 32), RGB, 0-255; normalisation is inside the graph",
        "opset": str(opset),
        "source_checkpoint_sha256": sha256_file(checkpoint_path),
    }
    if check_images is None:
        check_images = np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    return export_module(checkpoint.build_inference(), check_images, out_path, metadata, opset=opset, atol=atol,
                         what=str(checkpoint_path))


def export_declared(net: DeclaredNet, out_path: str | Path, *, opset: int = DEFAULT_OPSET,
                    atol: float | None = None) -> ExportResult:
    """Export a user's declared model; the numbers are checked on its sample inputs at `atol`, else its declared
    onnxruntime tolerance, else DEFAULT_ATOL."""
    model = net.model
    metadata = {"optcv_version": package_versions()["optcv"], "arch": f"declared:{model.name}",
                "classes": json.dumps(list(net.classes)), "input": describe_input(model.input), "opset": str(opset),
                "factory": model.factory or "", "factory_code_sha256": net.code_digest}
    return export_module(net.build_inference(), sample_inputs(model.input, 8), out_path, metadata, opset=opset,
                         atol=atol or model.tolerances.get("onnxruntime", DEFAULT_ATOL),
                         what=f"declared model {model.name!r}",
                         fix=f"raise tolerances.onnxruntime of {model.name!r} in {model.source.name} if that is "
                             "acceptable")


def export_module(model: torch.nn.Module, check_inputs: np.ndarray, out_path: str | Path, metadata: dict[str, str],
                  *, opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL, what: str = "the model",
                  fix: str = "") -> ExportResult:
    """Export `model` (eval mode) to ONNX, its input named "images" with a dynamic batch, checked as export_onnx
    says; `check_inputs` (two or more) give the example's shape and dtype and the numbers compared."""
    import onnx

    out_path = Path(out_path)
    example = torch.from_numpy(np.ascontiguousarray(check_inputs[:2]))  # batch >= 2 keeps the batch dim dynamic
    with atomic_path(out_path) as tmp:
        try:
            _torch_export(model, example, tmp, opset)
        except OSError:
            raise  # a full disk or an unwritable folder: the CLI names the path and the fix
        except Exception as exc:
            raise OptcvError(f"torch.onnx.export failed for {what}: {first_line(exc)}") from exc
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "optcv"
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        onnx.save(proto, str(tmp))
        max_abs_diff = _max_abs_diff(model, tmp, check_inputs)
        if not max_abs_diff <= atol:
            raise OptcvError(f"exported model differs from PyTorch by {max_abs_diff:.3g} (> tolerance {atol:g}); "
                             f"{fix + '; ' if fix else ''}nothing was written")
    return ExportResult(out_path, opset, max_abs_diff, atol, metadata)


def _torch_export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The dynamo exporter reports progress on stdout and via warnings; keep the CLI's output clean.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        # Ctrl-C waits for the export: raised inside it, the exporter reports KeyboardInterrupt as its own failure
        # (the CLI then says "export failed", exit 1), or, inside a callback from C++, the process aborts.
        try:
            with interrupts_deferred():
                torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), opset_version=opset,
                                  external_data=False, verbose=False)
        finally:
            logger.setLevel(level)


def _onnx_logits(onnx_path: Path, images: np.ndarray) -> tuple[str, np.ndarray]:
    """The exported graph's outputs: from ONNX Runtime, or, for a model it has no kernel for (a float64 network),
    from ONNX's own reference evaluator, so the export is checked either way."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedByRuntime

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except (NotImplementedByRuntime, InvalidGraph):
        from onnx.reference import ReferenceEvaluator

        outputs = ReferenceEvaluator(str(onnx_path)).run([OUTPUT_NAME], {INPUT_NAME: images})
        return "ONNX's reference evaluator", np.asarray(list(outputs)[0])
    return "ONNX Runtime", session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def _max_abs_diff(model: torch.nn.Module, onnx_path: Path, images: np.ndarray) -> float:
    evaluator, ort_logits = _onnx_logits(onnx_path, images)
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(images)).numpy()
    for runtime, logits in (("PyTorch", torch_logits), (evaluator, ort_logits)):
        if not np.isfinite(logits).all():
            raise OptcvError(f"the model's {runtime} outputs contain NaN or inf ({int((~np.isfinite(logits)).sum())} "
                             "values), so its predictions mean nothing: check the checkpoint's weights or retrain; "
                             "nothing was written")
    return float(np.max(np.abs(ort_logits - torch_logits)))


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata optcv wrote into an exported model, with classes and normalisation decoded."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OptcvError(f"ONNX model {path} does not exist; create one with `optcv export CHECKPOINT -o {path}`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise OptcvError(f"{path} is not a readable ONNX model ({type(exc).__name__}); export it again") from exc
    metadata: dict[str, Any] = {p.key: p.value for p in proto.metadata_props}
    for key in ("classes", "normalization"):
        if key in metadata:
            metadata[key] = json.loads(metadata[key])
    return metadata
