"""ONNX Runtime on the CPU execution provider, with explicit session options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optcv.backends.base import Closing, check_input
from optcv.backends.onnx_export import INPUT_NAME, OUTPUT_NAME, read_onnx_metadata
from optcv.declared.config import InputSpec
from optcv.env import usable_cores
from optcv.errors import BackendCannotRun, OptcvError, first_line

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


class OrtPredictor(Closing):
    def __init__(self, onnx_path: str | Path, threads: int | None = None, graph_optimization: str = "all",
                 spinning: bool = True, name: str = "onnxruntime", input_spec: InputSpec | None = None,
                 classes: tuple[str, ...] = ()):
        """`input_spec` None: optcv's own export (input "images", uint8 (N, 3, 32, 32)); otherwise a user's model,
        whose first input and first output are used, whatever their names."""
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedByRuntime

        metadata = read_onnx_metadata(onnx_path)
        if graph_optimization not in GRAPH_LEVELS:
            raise OptcvError(f"unknown graph optimisation level {graph_optimization!r}: "
                             f"choose from {', '.join(GRAPH_LEVELS)}")
        self.name = name
        self.classes = tuple(metadata.get("classes") or classes)
        self.input_spec = input_spec
        self.threads = threads or usable_cores()
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
        except (NotImplementedByRuntime, InvalidGraph) as exc:
            # No CPU kernel for an operator at the model's types (float64 convolutions, bfloat16 inputs).
            raise BackendCannotRun(name, str(onnx_path), first_line(exc)) from exc
        except Exception as exc:
            raise OptcvError(f"ONNX Runtime cannot load {onnx_path}: {first_line(exc)}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        if input_spec is not None:
            self._input, self._outputs = inputs[0], [self.session.get_outputs()[0].name]
        elif inputs != [INPUT_NAME]:
            raise OptcvError(f"{onnx_path} takes inputs {inputs}, not optcv's single {INPUT_NAME!r}; "
                             "export it with `optcv export`")
        else:
            self._input, self._outputs = INPUT_NAME, [OUTPUT_NAME]
        self._version = ort.__version__

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = check_input(images, self.input_spec)
        return self.session.run(self._outputs, {self._input: images})[0]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": f"onnxruntime {self._version}", "threads": self.threads,
                "graph_optimization": self.graph_optimization, "spinning": self.spinning,
                "execution_mode": "sequential", "provider": "CPUExecutionProvider"}
