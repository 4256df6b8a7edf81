"""CIFAR-10 as uint8 tensors in memory, from torchvision's layout or an image-folder tree.

Two layouts are understood under a data root:

* torchvision: ``ROOT/cifar-10-batches-py/`` (what ``torchvision.datasets.CIFAR10`` downloads);
* image folders: ``ROOT/{train,test}/<class>/*.{png,jpg,jpeg}`` (Kaggle's CIFAR-10, cifar2png).

Image folders are decoded once and cached as tensors in the user's cache folder, keyed by the
resolved folder and its file list, sizes and modification times, so a changed source is decoded again
and replaces its old entry; entries whose source folder is gone are evicted on the next write (and by
`optcv cache clear --stale`, optcv.cache). Nothing is ever written into the data root itself (except a
download the user asked for).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optcv._io import atomic_path, default_cache_dir, write_json
from optcv.env import usable_cores
from optcv.errors import OptcvError, first_line

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# The course printed its per-class table with these short names.
SHORT_NAMES: tuple[str, ...] = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
TORCHVISION_FOLDER = "cifar-10-batches-py"
CACHE_FORMAT = 2  # bump when the cached tensor layout changes (2: a JSON sidecar names the source folder)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Split:
    """One split of a data set: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices], self.classes)


@dataclass(frozen=True)
class CIFAR10:
    train: Split
    test: Split
    source: str


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """`data_dir` if given, else $OPTCV_DATA_DIR, else a folder in the user cache."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("OPTCV_DATA_DIR"):
        return Path(os.environ["OPTCV_DATA_DIR"]).expanduser()
    return default_cache_dir() / "data"


def detect_layout(root: Path) -> str:
    if (root / TORCHVISION_FOLDER).is_dir():
        return "torchvision"
    if all((root / split).is_dir() for split in SPLITS):
        return "image-folder"
    raise OptcvError(
        f"no CIFAR-10 found in {root} (looked for {root / TORCHVISION_FOLDER} and {root}/train + {root}/test); "
        "either pass --download to fetch it with torchvision, or point --data-dir (or OPTCV_DATA_DIR) "
        "at a folder holding train/<class>/*.png|jpg and test/<class>/*.png|jpg"
    )


def load_cifar10(
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> CIFAR10:
    """Load both splits of CIFAR-10 as uint8 tensors, from whichever layout `data_dir` holds."""
    root = resolve_data_dir(data_dir)
    if download and not (root / TORCHVISION_FOLDER).is_dir():
        return _load_torchvision(root, download=True)
    if not root.is_dir():
        raise OptcvError(
            f"data folder {root} does not exist; pass --download to fetch CIFAR-10 there, or point "
            "--data-dir (or OPTCV_DATA_DIR) at an existing CIFAR-10 folder"
        )
    if detect_layout(root) == "torchvision":
        return _load_torchvision(root, download=False)
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "cifar10-cache"
    train = load_image_folder_split(root / "train", cache_dir=cache, progress=progress)
    test = load_image_folder_split(root / "test", cache_dir=cache, progress=progress)
    return CIFAR10(train=train, test=test, source=f"image-folder:{root.resolve()}")


TORCHVISION_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _load_torchvision(root: Path, *, download: bool) -> CIFAR10:
    """Read torchvision's CIFAR-10 folder (python pickles); with `download`, let torchvision fetch it."""
    if download:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        try:
            TorchvisionCIFAR10(str(root), train=True, download=True)
        except (OSError, RuntimeError) as exc:
            raise OptcvError(f"could not download CIFAR-10 into {root}: {exc}") from exc
    folder = root / TORCHVISION_FOLDER
    splits = {}
    for split, names in TORCHVISION_FILES.items():
        images, labels = [], []
        for name in names:
            path = folder / name
            try:
                with open(path, "rb") as f:
                    batch = pickle.load(f, encoding="latin1")
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, *IMAGE_SHAPE))
                labels.extend(batch["labels"])
            except FileNotFoundError:
                raise OptcvError(f"{path} is missing: the torchvision CIFAR-10 folder is incomplete; "
                                 "delete it and use --download") from None
            except Exception as exc:
                raise OptcvError(f"cannot read {path} ({type(exc).__name__}): "
                                 f"delete {folder} and use --download") from exc
        splits[split] = Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))
    return CIFAR10(train=splits["train"], test=splits["test"], source=f"torchvision:{root.resolve()}")


@dataclass(frozen=True)
class ImageFile:
    path: str
    label: int
    size: int
    mtime_ns: int


def list_image_folder(split_dir: Path) -> list[ImageFile]:
    """Every image file of one split with its label, in canonical class order then file name."""
    if not split_dir.is_dir():
        raise OptcvError(f"split folder {split_dir} does not exist; expected {split_dir}/<class>/*.png|jpg")
    present = {p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing = [name for name in CLASSES if name not in present]
    if missing:
        raise OptcvError(
            f"missing class folder {split_dir / missing[0]} ({len(missing)} of 10 missing); "
            f"each split needs the folders {', '.join(CLASSES)}"
        )
    unknown = sorted(present - set(CLASSES))
    if unknown:
        raise OptcvError(
            f"unexpected folder {split_dir / unknown[0]}: class folders must be exactly {', '.join(CLASSES)}"
        )
    files: list[ImageFile] = []
    for label, name in enumerate(CLASSES):
        with os.scandir(split_dir / name) as entries:
            class_files = [_image_file(entry, label) for entry in entries
                           if entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.name.startswith(".")]
        if not class_files:
            raise OptcvError(f"class folder {split_dir / name} holds no .png/.jpg/.jpeg images")
        files.extend(sorted(class_files, key=lambda f: f.path))
    return files


def _image_file(entry: os.DirEntry[str], label: int) -> ImageFile:
    try:
        st = entry.stat()
    except OSError as exc:  # a dangling link or a symlink loop
        raise OptcvError(f"cannot read image {entry.path} ({exc.strerror}); remove or replace it") from exc
    return ImageFile(entry.path, label, st.st_size, st.st_mtime_ns)


def folder_fingerprint(files: list[ImageFile]) -> str:
    digest = hashlib.sha256(f"optcv-cache-{CACHE_FORMAT}".encode())
    digest.update("\n".join(f"{f.path}|{f.label}|{f.size}|{f.mtime_ns}" for f in files).encode())
    return digest.hexdigest()


def decode_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.size != (IMAGE_SHAPE[2], IMAGE_SHAPE[1]):
                raise OptcvError(f"{path} is {image.size[0]}x{image.size[1]}, CIFAR-10 images must be 32x32; "
                                 "resize or remove it")
            if image.mode != "RGB":
                raise OptcvError(f"{path} has mode {image.mode}, CIFAR-10 images must be RGB; convert or remove it")
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OptcvError(f"cannot read image {path} ({first_line(exc)}); remove or replace it") from exc


def load_image_folder_split(split_dir: Path, *, cache_dir: Path, progress: bool = True) -> Split:
    """Decode one split folder into tensors, or read them from the cache when the folder is unchanged."""
    files = list_image_folder(split_dir)
    fingerprint = folder_fingerprint(files)
    location = hashlib.sha256(str(split_dir.resolve()).encode()).hexdigest()[:12]
    cache_file = cache_dir / f"{split_dir.name}-{location}-{fingerprint[:16]}.pt"
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            if cached.get("fingerprint") == fingerprint:
                return Split(cached["images"], cached["labels"])
        except Exception:  # a damaged cache is only a slower load: decode again
            pass

    from tqdm.auto import tqdm

    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        decoded = pool.map(decode_image, (f.path for f in files), chunksize=256)
        bar = tqdm(decoded, total=len(files), desc=f"decoding {split_dir}", unit="img",
                   disable=not progress or None, leave=False)
        for i, array in enumerate(bar):
            images[i] = array
    split = Split(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.tensor([f.label for f in files], dtype=torch.int64),
    )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f"{split_dir.name}-{location}-*.pt"):
            remove_decode_entry(stale)
        # The sidecar first: a tensor file without one counts as of unknown origin, which eviction removes.
        write_json(cache_file.with_suffix(".json"), {"source": str(split_dir.resolve()), "fingerprint": fingerprint,
                                                     "images": len(files), "format": CACHE_FORMAT})
        with atomic_path(cache_file) as tmp:
            torch.save({"fingerprint": fingerprint, "images": split.images, "labels": split.labels}, tmp)
        evict_decode_entries(cache_dir, lambda entry: entry.source_gone or entry.source is None)
    except OSError as exc:  # a read-only or full cache folder costs speed, not correctness
        logging.getLogger(__name__).warning(
            "optcv: could not write the decode cache %s (%s); the next load decodes again", cache_file,
            exc.strerror or type(exc).__name__)
    return split


@dataclass(frozen=True)
class DecodeEntry:
    """One cached decode: its tensor file, size, and the source folder it was decoded from (None: unknown)."""

    path: Path
    bytes: int
    source: str | None
    fingerprint: str | None

    @property
    def source_gone(self) -> bool:
        return self.source is not None and not Path(self.source).is_dir()

    def source_changed(self) -> bool:
        """The source folder exists but its files differ from the decode (a listing of the folder)."""
        if self.source is None or self.source_gone:
            return False
        try:
            return folder_fingerprint(list_image_folder(Path(self.source))) != self.fingerprint
        except OptcvError:
            return True


def decode_entries(cache_dir: Path) -> list[DecodeEntry]:
    entries = []
    for path in sorted(cache_dir.glob("*.pt")):
        source: str | None = None
        fingerprint: str | None = None
        try:
            sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            source, fingerprint = str(sidecar["source"]), str(sidecar["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an older format or a damaged sidecar: its origin is unknown
        entries.append(DecodeEntry(path, path.stat().st_size, source, fingerprint))
    return entries


def evict_decode_entries(cache_dir: Path, stale: Callable[[DecodeEntry], bool]) -> list[DecodeEntry]:
    evicted = [entry for entry in decode_entries(cache_dir) if stale(entry)]
    for entry in evicted:
        remove_decode_entry(entry.path)
    return evicted


def remove_decode_entry(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


def stratified_indices(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded subset of `size` items with the class proportions of `labels`."""
    n = int(labels.shape[0])
    if size <= 0 or size > n:
        raise OptcvError(f"subset size {size} is out of range: choose 1..{n}")
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels)
    exact = counts.double() * size / n
    quota = exact.floor().long()
    # Hand the items left over by flooring to the classes with the largest remainders.
    for c in torch.argsort(exact - quota.double(), descending=True, stable=True)[: size - int(quota.sum())]:
        quota[c] += 1
    chosen = []
    for c in range(len(counts)):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: int(quota[c])]])
    return torch.sort(torch.cat(chosen)).values


def stratified_subset(split: Split, size: int | None, seed: int = 0) -> Split:
    """A seeded subset of `size` images with the class proportions of `split` (all of it when None)."""
    if size is None or size == len(split):
        return split
    return split.take(stratified_indices(split.labels, size, seed))


def split_train_val(split: Split, val_size: int, seed: int = 0) -> tuple[Split, Split]:
    """Hold out a stratified, seeded validation part of a training split: (rest, validation)."""
    if val_size <= 0 or val_size >= len(split):
        raise OptcvError(f"validation size {val_size} is out of range: choose 1..{len(split) - 1}")
    val_indices = stratified_indices(split.labels, val_size, seed)
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[val_indices] = False
    return split.take(torch.nonzero(keep).flatten()), split.take(val_indices)


def normalization_affine(normalization: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with uint8 * scale + shift == (x / 255 - mean) / std, shaped (1, 3, 1, 1)."""
    mean = torch.tensor(normalization.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, dtype=torch.float32).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def normalize(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float32 standardised per channel, exactly as the exported models do it."""
    scale, shift = normalization_affine(normalization)
    return images.float() * scale + shift
