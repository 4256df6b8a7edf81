"""OpenVINO on the CPU, reading the same ONNX file as ONNX Runtime (optional: `pip install 'optcv[openvino]'`).

OpenVINO picks bf16 for inference on CPUs with AMX or AVX-512 bf16 unless told otherwise; the fp32 backend
asks for f32 explicitly, so it is compared with the other fp32 backends on the same arithmetic. A model is
compiled once per batch size (static shapes run faster than a dynamic batch), on first use or in `warm`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optcv.backends.base import Closing, check_input
from optcv.backends.onnx_export import INPUT_NAME, read_onnx_metadata
from optcv.declared.config import InputSpec
from optcv.errors import OptcvError, first_line, missing_optional_module


def openvino_version() -> str | None:
    try:
        from importlib import metadata

        return metadata.version("openvino")
    except Exception:
        return None


class OpenVinoPredictor(Closing):
    def __init__(self, onnx_path: str | Path, threads: int, hint: str = "LATENCY", name: str = "openvino",
                 input_spec: InputSpec | None = None, classes: tuple[str, ...] = ()):
        try:
            import openvino as ov
        except ImportError as exc:
            missing = missing_optional_module(exc, "the openvino backend")
            if missing is None:
                raise
            raise missing from exc

        self.name = name
        self.classes = tuple(read_onnx_metadata(onnx_path).get("classes") or classes)
        self.input_spec = input_spec
        self.threads = threads
        self.hint = hint
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(onnx_path))
        except Exception as exc:
            raise OptcvError(f"OpenVINO cannot read {onnx_path}: {first_line(exc)}") from exc
        self._input = INPUT_NAME if input_spec is None else self._model.inputs[0].get_any_name()
        self._config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint, "NUM_STREAMS": 1,
                        "INFERENCE_PRECISION_HINT": "f32"}
        self._requests: dict[int, Any] = {}
        self._version = ov.__version__ if hasattr(ov, "__version__") else openvino_version()

    def _request(self, batch: int) -> Any:
        request = self._requests.get(batch)
        if request is None:
            model = self._model.clone()
            model.reshape({self._input: [batch, *self._model.input(0).get_partial_shape()[1:].to_shape()]})
            compiled = self._core.compile_model(model, "CPU", self._config)
            request = self._requests[batch] = compiled.create_infer_request()
        return request

    def warm(self, batch: int) -> None:
        """Compile for `batch` now, outside any timing."""
        self._request(batch)

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = check_input(images, self.input_spec)
        request = self._request(len(images))
        request.infer({0: images})
        return np.array(request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self._requests.clear()  # its threads are its own; nothing process-wide to give back

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": f"openvino {self._version}", "threads": self.threads,
                "performance_hint": self.hint, "precision": "f32", "streams": 1,
                "compiled_batch_sizes": sorted(self._requests)}
