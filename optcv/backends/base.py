"""The predictor interface every backend implements, and the input check they share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch

from optcv.data import IMAGE_SHAPE
from optcv.declared.config import InputSpec
from optcv.errors import OptcvError


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

    def __enter__(self) -> Predictor: ...

    def __exit__(self, *exc: object) -> None: ...


class InferenceSource(Protocol):
    """What a PyTorch predictor is made from: an optcv checkpoint, or a user's declared model."""

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def input_spec(self) -> InputSpec | None:
        """None: optcv's own uint8 (N, 3, 32, 32) images."""
        ...

    def build_inference(self) -> torch.nn.Module: ...


class Closing:
    """`with make_predictor(...) as predictor:` closes it, whatever happens in the block."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def all_closed(predictors: Sequence[Predictor]) -> Iterator[Sequence[Predictor]]:
    """Every predictor of the block closed after it, whatever happens in it."""
    try:
        yield predictors
    finally:
        for predictor in predictors:
            predictor.close()


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


def check_input(inputs: Any, spec: InputSpec | None) -> np.ndarray:
    """`inputs` as the model's declared input (N, *spec.shape) of spec.dtype; optcv's images when spec is None."""
    if spec is None:
        return check_images(inputs)
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.numpy()
    if not isinstance(inputs, np.ndarray):
        raise OptcvError(f"inputs must be a NumPy array, got {type(inputs).__name__}")
    if inputs.dtype != np.dtype(spec.dtype) or inputs.shape[1:] != spec.shape or inputs.shape[0] == 0:
        raise OptcvError(f"inputs must be {spec.dtype} shaped (N, {', '.join(map(str, spec.shape))}) with N >= 1, "
                         f"got {inputs.dtype} {tuple(inputs.shape)}")
    return inputs
