"""Shared pytest set-up for tests/ and benchmarks/: isolated caches, synthetic and real CIFAR-10."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from optcv.data import CLASSES

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def make_image_folder(root: Path, train_per_class: int = 8, test_per_class: int = 4, seed: int = 0,
                      suffix: str = ".png") -> Path:
    """A learnable CIFAR-10-shaped image-folder tree: each class a colour, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (len(CLASSES), 3))
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        # Create the folders in reverse order so label order cannot come from creation order.
        for label in reversed(range(len(CLASSES))):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 40, (32, 32, 3))
                pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i:04d}{suffix}")
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny-cifar10"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real CIFAR-10 copy, through the project's normal option: $OPTCV_DATA_DIR.

    In CI a missing copy fails the run; elsewhere the test is skipped with instructions.
    """
    from optcv.data import detect_layout, resolve_data_dir
    from optcv.errors import OptcvError

    path = resolve_data_dir(None)
    try:
        detect_layout(path)
    except OptcvError as exc:
        message = f"real CIFAR-10 is needed here: set OPTCV_DATA_DIR ({exc})"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path
