"""A case inside a memory or instructions worker: the callable of one call's work (a prediction or a training step,
with the side's code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .build import declared_source
from .protocol import Built, CaseSpec, DeclaredModelFiles, ReferenceModel
from .side import side_module

TRAIN_STEP_IMAGES = 64  # images per timed training call: one step at batch 64
DECLARED_INPUTS = 16  # distinct inputs a declared model's case cycles through (at least one batch)
# The case being run, for the self-test's injected extra work (optcv.gate.inject), which is sized per case.
CASE_VARIABLE = "OPTCV_GATE_CASE"


class Case:
    """One case inside a worker: a callable of one call's work, and what it needs."""

    def __init__(self, spec: CaseSpec, artifacts: Built, inputs: dict[str, np.ndarray]):
        self.spec = spec
        model = artifacts.models[spec.model]
        if isinstance(model, DeclaredModelFiles):
            self._setup_declared(model)
        elif spec.kind == "predict":
            self._setup_predict(model, inputs["predict_images"])
        else:
            self._setup_train(model, inputs["train_images"], inputs["train_labels"])

    def _setup_predict(self, model: ReferenceModel, images: np.ndarray) -> None:
        source = side_module("runtime").ModelSource(Path(model.checkpoint), Path(model.onnx))
        self._use_predictor(source, images, model.onnx)

    def _setup_declared(self, entry: DeclaredModelFiles) -> None:
        """A declared model's predictor, on inputs drawn from its declaration (the same seed on both sides)."""
        model, source = declared_source(entry)
        count = max(1, DECLARED_INPUTS // self.spec.batch) * self.spec.batch
        images = side_module("declared_inputs").sample_inputs(model.input, count, seed=0)
        self._use_predictor(source, images, entry.onnx)

    def _use_predictor(self, source: Any, images: np.ndarray, onnx_path: str) -> None:
        batch = self.spec.batch
        # A compiling backend prepares the case's batch size here, in the set-up, never inside a timing.
        options = {"batch_sizes": (batch,)} if self.spec.backend == "torch-compile" else {}
        self.source = source
        self.predictor = side_module("runtime").make_predictor(self.spec.backend, source, self.spec.threads,
                                                               **options)
        self.inputs = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
        self.position = 0
        self.settings = self.predictor.describe()
        self.onnx_path = onnx_path

    def _setup_train(self, model: ReferenceModel, images: np.ndarray, labels: np.ndarray) -> None:
        import torch

        Split = side_module("data").Split  # noqa: N806
        self.model = side_module("models").load_checkpoint(model.checkpoint).build()
        n = TRAIN_STEP_IMAGES
        self.split = Split(torch.from_numpy(images[:n].copy()), torch.from_numpy(labels[:n].astype(np.int64)))
        self.eval_split = Split(torch.from_numpy(images[n:n + 10].copy()),
                                torch.from_numpy(labels[n:n + 10].astype(np.int64)))
        self.train_config = side_module("train").TrainConfig("SGD", epochs=1, batch_size=self.spec.batch, seed=0)
        self.settings = {"backend": "pytorch (training)", "threads": self.spec.threads,
                         "optimizer": "SGD", "images_per_call": n, "batch_size": self.spec.batch}

    def call(self) -> None:
        if self.spec.kind == "predict":
            x = self.inputs[self.position]
            self.position = (self.position + 1) % len(self.inputs)
            self.predictor.predict(x)
        else:
            import torch

            train_module = side_module("train")  # looked up per call: the self-test's injection replaces train
            if torch.get_num_threads() != self.spec.threads:
                torch.set_num_threads(self.spec.threads)
            train_module.train(self.model, self.split, self.eval_split, self.train_config, progress=False)
