"""Inputs for a declared model, as its InputSpec describes them: synthetic, or sample and labelled images.

Every array is (N, *shape) of the declared dtype, the same on every call with the same seed, so both sides of
a gate and every backend of a parity check see the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optcv.declared.config import InputSpec
from optcv.errors import OptcvError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def synthetic_inputs(spec: InputSpec, count: int, seed: int = 0) -> np.ndarray:
    """`count` inputs drawn uniformly from the declared range (whole numbers for integer types), normalised."""
    rng = np.random.default_rng(seed)
    low, high = spec.value_range
    shape = (count, *spec.shape)
    if spec.dtype.startswith("float"):
        return _normalised(rng.uniform(low, high, shape), spec)
    return rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1, shape).astype(spec.dtype)


def sample_inputs(spec: InputSpec, count: int, seed: int = 0) -> np.ndarray:
    """`count` inputs: the sample images in name order (repeated when there are fewer), else synthetic ones."""
    if spec.samples is None:
        return synthetic_inputs(spec, count, seed)
    files = image_files(spec.samples)
    return np.stack([load_image(files[i % len(files)], spec) for i in range(count)])


def labelled_inputs(spec: InputSpec, folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(inputs, labels, classes) of a folder with one sub-folder of images per class, classes in name order."""
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise OptcvError(f"labels folder {folder} has no class sub-folders; put each class's images in "
                         f"{folder}/<class>/")
    inputs, labels = [], []
    for label, name in enumerate(classes):
        for path in image_files(folder / name):
            inputs.append(load_image(path, spec))
            labels.append(label)
    return np.stack(inputs), np.asarray(labels, dtype=np.int64), classes


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not p.name.startswith("."))
    if not files:
        raise OptcvError(f"{folder} holds no .png/.jpg/.jpeg images; add some or point to another folder")
    return files


def load_image(path: Path, spec: InputSpec) -> np.ndarray:
    """One image as the model's input: resized, centre-cropped, channels first, scaled and normalised."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = spec.shape
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB" if channels == 3 else "L")
        scale = (spec.resize or max(height, width)) / min(image.size)
        image = image.resize((max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale))),
                             Image.Resampling.BILINEAR)
        left, top = (image.size[0] - width) // 2, (image.size[1] - height) // 2
        pixels = np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise OptcvError(f"cannot read image {path} ({first_line(exc)}); remove or replace it") from exc
    pixels = pixels.reshape(height, width, channels).transpose(2, 0, 1)
    if spec.dtype == "uint8":
        return pixels.copy()
    return _normalised(pixels / 255.0, spec)


def _normalised(values: np.ndarray, spec: InputSpec) -> np.ndarray:
    if spec.mean is not None and spec.std is not None:
        along_channels = (-1,) + (1,) * (len(spec.shape) - 1)
        values = (values - np.reshape(spec.mean, along_channels)) / np.reshape(spec.std, along_channels)
    return values.astype(spec.dtype)
