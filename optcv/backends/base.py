"""The predictor interface every backend implements, and the input check they share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch

from optcv.data import IMAGE_SHAPE
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
