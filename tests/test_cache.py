"""The cache folder: one entry per resolved source folder, stale entries evicted, `optcv cache info/clear`."""

import os
import shutil
import time

from conftest import make_image_folder
from optcv.cache import DECODES, KEY_FILE, UNUSED_DAYS, cache_info, clear_cache, mark_used
from optcv.cli import main
from optcv.data import load_cifar10


def _decodes(cache):
    return sorted(p.name for p in (cache / DECODES).glob("*.pt"))


def test_a_folder_loaded_by_relative_and_absolute_path_is_cached_once(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", 2, 1)
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    load_cifar10("data", cache_dir=cache / DECODES, progress=False)
    load_cifar10(root.resolve(), cache_dir=cache / DECODES, progress=False)
    assert len(_decodes(cache)) == 2  # train and test, not four


def test_an_entry_whose_source_vanished_is_evicted_by_the_next_write(tmp_path):
    cache = tmp_path / "cache"
    gone = make_image_folder(tmp_path / "gone", 2, 1)
    load_cifar10(gone, cache_dir=cache / DECODES, progress=False)
    first = _decodes(cache)
    shutil.rmtree(gone)
    load_cifar10(make_image_folder(tmp_path / "kept", 2, 1), cache_dir=cache / DECODES, progress=False)
    now = _decodes(cache)
    assert len(now) == 2 and not set(first) & set(now)
    assert not list((cache / DECODES).glob("*.json"))[2:]  # the sidecars went with their entries


def test_info_names_each_decode_and_why_an_entry_is_stale(tmp_path):
    cache = tmp_path / "cache"
    changed = make_image_folder(tmp_path / "changed", 2, 1)
    current = make_image_folder(tmp_path / "current", 2, 1, seed=1)
    for root in (changed, current):
        load_cifar10(root, cache_dir=cache / DECODES, progress=False)
    (changed / "train" / "cat" / "0000.png").unlink()
    (cache / DECODES / "train-old-format.pt").write_bytes(b"x" * 10)  # an older optcv's entry: no sidecar
    old_model, new_model = cache / "bench-models" / "tutorial-old", cache / "gate-artifacts" / "tutorial-new"
    for folder in (old_model, new_model):
        folder.mkdir(parents=True)
        (folder / KEY_FILE).write_text("{}")
    mark_used(new_model)
    long_ago = time.time() - (UNUSED_DAYS + 1) * 86400
    os.utime(old_model / KEY_FILE, (long_ago, long_ago))

    entries = cache_info(cache).entries
    states = {(e.area, e.source or e.path.name): e.state for e in entries}
    assert states[(DECODES, str(changed.resolve() / "train"))] == "source changed"
    assert states[(DECODES, str(changed.resolve() / "test"))] == "current"
    assert states[(DECODES, str(current.resolve() / "train"))] == "current"
    assert states[(DECODES, "train-old-format.pt")] == "origin unknown"
    assert states[("bench-models", "tutorial-old")] == f"unused for {UNUSED_DAYS}+ days"
    assert states[("gate-artifacts", "tutorial-new")] == "current"

    removed = clear_cache(cache, stale_only=True)
    assert sorted(e.path for e in removed) == sorted(e.path for e in entries if e.stale)
    assert len(removed) == 3
    left = cache_info(cache).entries
    assert len(left) == 4 and not any(e.stale for e in left)  # changed/test, current/train + test, the gate model
    assert all(e.path.exists() for e in left) and not any(e.path.exists() for e in removed)


def test_cache_cli_info_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPTCV_CACHE_DIR", str(tmp_path / "cache"))
    load_cifar10(make_image_folder(tmp_path / "data", 2, 1), progress=False)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cache") in out and str((tmp_path / "data" / "train").resolve()) in out
    assert main(["cache", "clear", "--stale"]) == 0
    assert capsys.readouterr().out.startswith("removed 0 stale cache entries")
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 cache entries")
    assert not list((tmp_path / "cache" / DECODES).glob("*"))
