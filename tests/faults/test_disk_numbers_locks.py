"""A full disk during each kind of write, numerical faults, two processes on one folder, and skips that CI
must not allow."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from optcv._io import folder_lock, write_json, write_text
from optcv.backends.onnx_export import export_onnx
from optcv.cli import main
from optcv.data import load_cifar10
from optcv.errors import OptcvError
from optcv.training.models import Checkpoint, TutorialNetConfig, build_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _fill_disk_after(limit: int):
    """A file write that stores `limit` bytes and then finds the disk full, as ENOSPC does."""

    def write(self, data, *args, **kwargs):
        with open(self, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data[:limit])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    return write


def _full_disk_in_torch_save(monkeypatch) -> None:
    real = torch.save

    def save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", save)


def _no_temporaries(folder: Path) -> bool:
    return not list(folder.rglob("*.tmp"))


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", Checkpoint(TutorialNetConfig(), build_model(TutorialNetConfig(),
                                                                                                seed=0).state_dict()))
    before = path.read_bytes()
    _full_disk_in_torch_save(monkeypatch)
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, Checkpoint(TutorialNetConfig(), build_model(TutorialNetConfig(), seed=1).state_dict()))
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


@pytest.mark.parametrize("writer", ["baseline JSON", "report Markdown"])
def test_full_disk_while_writing_a_baseline_or_report_keeps_the_previous_one(writer, tmp_path, monkeypatch):
    path = tmp_path / ("ratios.json" if writer == "baseline JSON" else "report.md")
    write = (lambda value: write_json(path, value)) if path.suffix == ".json" else (lambda v: write_text(path, str(v)))
    write({"schema": "previous", "ratios": {"a": 1}})
    before = path.read_bytes()
    monkeypatch.setattr(Path, "write_text", _fill_disk_after(10))
    with pytest.raises(OSError):
        write({"schema": "next", "ratios": {"a": 2, "b": 3}})
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_full_disk_while_caching_a_decode_loses_nothing_and_says_so(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    kept = make_image_folder(tmp_path / "kept", 2, 1)
    load_cifar10(kept, cache_dir=cache, progress=False)
    entries = {p: p.read_bytes() for p in cache.iterdir()}
    other = make_image_folder(tmp_path / "other", 2, 1, seed=3)
    _full_disk_in_torch_save(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="optcv.data"):
        data = load_cifar10(other, cache_dir=cache, progress=False)
    assert len(data.train) == 20 and len(data.test) == 10  # decoded all the same
    assert "could not write the decode cache" in caplog.text and "No space left" in caplog.text
    assert {p: p.read_bytes() for p in cache.iterdir() if p in entries} == entries  # the other entry intact
    assert not [p for p in cache.glob("*.pt") if p not in entries] and _no_temporaries(cache)


def test_full_disk_at_the_cli_is_one_line_and_keeps_the_previous_export(tmp_path, monkeypatch, capsys):
    import onnx

    checkpoint = save_checkpoint(tmp_path / "m.pt", Checkpoint(TutorialNetConfig(), build_model(TutorialNetConfig(),
                                                                                                 seed=0).state_dict()))
    onnx_path = export_onnx(checkpoint, tmp_path / "m.onnx").path
    before = onnx_path.read_bytes()
    real_save = onnx.save

    def save(proto, f, *args, **kwargs):
        real_save(proto, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(onnx, "save", save)
    capsys.readouterr()
    assert main(["export", str(checkpoint), "-o", str(onnx_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "free space" in err[0]
    assert onnx_path.read_bytes() == before and _no_temporaries(tmp_path)


def test_an_export_whose_outputs_are_not_finite_is_refused(tmp_path):
    state = build_model(TutorialNetConfig(), seed=0).state_dict()
    state[next(k for k in state if k.endswith("weight"))][0, 0, 0, 0] = float("nan")
    checkpoint = save_checkpoint(tmp_path / "nan.pt", Checkpoint(TutorialNetConfig(), state))
    with pytest.raises(OptcvError, match="outputs contain NaN or inf.*nothing was written"):
        export_onnx(checkpoint, tmp_path / "nan.onnx")
    assert not (tmp_path / "nan.onnx").exists() and _no_temporaries(tmp_path)


def test_a_second_compare_on_the_same_folder_is_told_who_holds_it(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", 2, 1)
    out = tmp_path / "out"
    with folder_lock(out / ".lock", "optcv compare"):
        code = main(["compare", "--data-dir", str(data), "--epochs", "1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "in use by another optcv compare" in err and f"pid {os.getpid()}" in err
    assert not (out / "histories.json").exists()
    assert main(["compare", "--data-dir", str(data), "--epochs", "1", "--out", str(out), "--quiet"]) == 0


@pytest.mark.parametrize("test", ["tests/test_real_data.py", "tests/test_tune.py::test_two_workers_against_postgresql"])
def test_ci_cannot_skip_a_missing_data_set_or_service(test, tmp_path):
    """With OPTCV_NO_SKIP=1 (.ci/run sets it) a missing CIFAR-10 copy or PostgreSQL fails the run, even when the
    runner exported CI=false."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPTCV_TEST_POSTGRES_URL",)}
    env.update(CI="false", OPTCV_NO_SKIP="1", OPTCV_DATA_DIR=str(tmp_path / "no-cifar"))
    pytest = [sys.executable, "-m", "pytest", test, "-x", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
              "--tier", "full", "-o", "addopts="]
    result = subprocess.run(pytest, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1]
    failed = "failed" in summary or "error" in summary  # a fixture that fails is reported as an error
    assert result.returncode == 1 and failed and "skipped" not in summary, result.stdout[-2000:]
    assert "nothing may be skipped here" in result.stdout
    skipped = subprocess.run(pytest, cwd=ROOT, capture_output=True, text=True, env={**env, "OPTCV_NO_SKIP": "0"},
                             timeout=300)
    assert skipped.returncode == 0 and "skipped" in skipped.stdout.strip().splitlines()[-1]
