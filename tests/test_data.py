import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import optcv.data
from conftest import make_image_folder
from optcv.data import (
    CLASSES,
    Normalization,
    detect_layout,
    load_cifar10,
    normalize,
    resolve_data_dir,
    split_train_val,
    stratified_subset,
)
from optcv.errors import OptcvError


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_image_folder_loads_with_canonical_labels(tmp_path):
    root = make_image_folder(tmp_path / "data", train_per_class=3, test_per_class=2)
    data = load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    assert data.train.images.shape == (30, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (20, 3, 32, 32)
    # Folders were created in reverse order; labels still follow CIFAR-10's canonical order.
    assert data.train.labels.tolist() == [c for c in range(10) for _ in range(3)]
    first_plane = np.asarray(Image.open(root / "train" / "airplane" / "0000.png")).transpose(2, 0, 1)
    assert np.array_equal(data.train.images[0].numpy(), first_plane)
    truck = np.asarray(Image.open(root / "test" / "truck" / "0001.png")).transpose(2, 0, 1)
    assert np.array_equal(data.test.images[-1].numpy(), truck)
    assert data.source.startswith("image-folder:")


def test_jpeg_and_png_both_read(tmp_path):
    root = make_image_folder(tmp_path / "data", 2, 1, suffix=".jpg")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "train" / "cat" / "extra.PNG")
    data = load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    assert len(data.train) == 21


def test_torchvision_layout(tmp_path):
    folder = tmp_path / "tv" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 3)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    assert detect_layout(tmp_path / "tv") == "torchvision"
    data = load_cifar10(tmp_path / "tv", progress=False)
    assert len(data.train) == 20 and len(data.test) == 3
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)
    assert np.array_equal(data.test.images.numpy().reshape(3, -1), raw["data"])
    (folder / "data_batch_3").unlink()
    with pytest.raises(OptcvError, match="data_batch_3 is missing"):
        load_cifar10(tmp_path / "tv", progress=False)


def test_cache_is_used_and_invalidated_when_a_file_changes(tmp_path):
    root = make_image_folder(tmp_path / "data", 2, 1)
    cache = tmp_path / "cache"
    load_cifar10(root, cache_dir=cache, progress=False)
    cached = sorted(p.name for p in cache.glob("*.pt"))
    assert len(cached) == 2  # one per split
    # A changed image must be decoded again: the cache key covers size and mtime.
    target = root / "train" / "airplane" / "0000.png"
    Image.new("RGB", (32, 32), (7, 7, 7)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    data = load_cifar10(root, cache_dir=cache, progress=False)
    assert data.train.images[0, :, 0, 0].tolist() == [7, 7, 7]
    assert len(list(cache.glob("*.pt"))) == 2  # the stale entry was replaced, not kept beside


def test_second_load_reads_cache_not_images(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", 2, 1)
    first = load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr("optcv.data.decode_image", no_decoding)
    second = load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(first.train.images, second.train.images)


def test_a_damaged_cache_entry_is_decoded_again_and_replaced(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", 2, 1)
    cache = tmp_path / "cache"
    first = load_cifar10(root, cache_dir=cache, progress=False)
    entries = sorted(cache.glob("*.pt"))
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])  # cut short, as by a full disk
    decoded = []
    real_decode = optcv.data.decode_image
    monkeypatch.setattr("optcv.data.decode_image", lambda path: decoded.append(path) or real_decode(path))
    second = load_cifar10(root, cache_dir=cache, progress=False)
    assert len(decoded) == 30  # every image decoded again (2 train + 1 test per class)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert sorted(cache.glob("*.pt")) == entries and all(e.stat().st_size > 1000 for e in entries)  # rewritten


def test_nothing_is_written_into_the_data_folder(tmp_path):
    root = make_image_folder(tmp_path / "data", 2, 1)
    before = snapshot(root)
    load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: Image.new("RGB", (30, 32)).save(r / "train" / "dog" / "0001.png"), r"dog/0001.png is 30x32"),
        (lambda r: Image.new("L", (32, 32)).save(r / "test" / "cat" / "0000.png"), r"cat/0000.png has mode L"),
        (lambda r: (r / "train" / "frog" / "0000.png").write_bytes(b"not an image"),
         r"cannot read image .*frog/0000.png"),
        (lambda r: [p.unlink() for p in (r / "test" / "ship").iterdir()], r"class folder .*test/ship holds no"),
        (lambda r: __import__("shutil").rmtree(r / "train" / "horse"), r"missing class folder .*train/horse"),
        (lambda r: (r / "train" / "unicorn").mkdir(), r"unexpected folder .*train/unicorn"),
    ],
    ids=["wrong-size", "wrong-mode", "unreadable", "empty-class", "missing-class", "unknown-class"],
)
def test_bad_data_gives_a_clear_error(tmp_path, damage, message):
    root = make_image_folder(tmp_path / "data", 2, 1)
    damage(root)
    with pytest.raises(OptcvError, match=message):
        load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)


def test_missing_data_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(OptcvError) as info:
        load_cifar10(tmp_path / "nowhere", progress=False)
    text = str(info.value)
    assert str(tmp_path / "nowhere") in text and "--download" in text and "--data-dir" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptcvError, match="no CIFAR-10 found in .*empty.*--download.*OPTCV_DATA_DIR"):
        load_cifar10(tmp_path / "empty", progress=False)


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTCV_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("OPTCV_DATA_DIR")
    monkeypatch.setenv("OPTCV_CACHE_DIR", str(tmp_path / "cache"))
    assert resolve_data_dir(None) == tmp_path / "cache" / "data"


def test_stratified_subset_keeps_proportions_and_is_seeded(tmp_path):
    root = make_image_folder(tmp_path / "data", 10, 1)
    data = load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    subset = stratified_subset(data.train, 30, seed=1)
    assert torch.bincount(subset.labels, minlength=10).tolist() == [3] * 10
    again = stratified_subset(data.train, 30, seed=1)
    other = stratified_subset(data.train, 30, seed=2)
    assert torch.equal(subset.images, again.images)
    assert not torch.equal(subset.images, other.images)
    odd = stratified_subset(data.train, 37, seed=0)
    assert len(odd) == 37 and set(torch.bincount(odd.labels).tolist()) <= {3, 4}
    with pytest.raises(OptcvError, match="out of range"):
        stratified_subset(data.train, 101)


def test_train_val_split_is_disjoint(tmp_path):
    root = make_image_folder(tmp_path / "data", 10, 1)
    data = load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    rest, val = split_train_val(data.train, 20, seed=0)
    assert len(rest) == 80 and len(val) == 20
    rows = {tuple(x.flatten()[:64].tolist()) for x in rest.images}
    assert not any(tuple(x.flatten()[:64].tolist()) in rows for x in val.images)


def test_normalize_matches_the_definition():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    norm = Normalization()
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert torch.allclose(normalize(images, norm), expected, atol=1e-5)


def test_classes_are_cifar10_order():
    assert CLASSES[0] == "airplane" and CLASSES[-1] == "truck" and len(CLASSES) == 10
