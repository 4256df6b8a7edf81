"""Cached builds (optcv.build_cache): keyed by every input that can change them, never used when not whole.

A reference model's entry is used by the benchmark suite and the gate for as long as its key holds; a build is
minutes, so an entry that is half-copied, damaged or of other inputs must be built again, never served."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from optcv.build_cache import MANIFEST, build_once, key_of, machine_inputs, remove_abandoned_builds, source_closure
from optcv.measure.reference import build_inputs

INPUTS = {"recipe": {"epochs": 1}, "code": {"optcv/a.py": "0" * 64}}


class Builder:
    """Writes two files and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        (folder / "model.pt").write_bytes(os.urandom(4096))
        (folder / "sub").mkdir()
        (folder / "sub" / "model.onnx").write_text("onnx " * 100)


def test_an_entry_is_built_once_and_then_reused_with_a_manifest_of_its_files(tmp_path):
    builder = Builder()
    folder = build_once(tmp_path / "tutorial-x", INPUTS, builder)
    again = build_once(tmp_path / "tutorial-x", INPUTS, builder)
    assert folder == again and builder.calls == 1
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["inputs"] == INPUTS and sorted(manifest["files"]) == ["model.pt", "sub/model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tutorial-x.lock", "tutorial-x"]  # no staging left


def _flip_a_byte(folder: Path) -> None:
    data = bytearray((folder / "model.pt").read_bytes())
    data[100] ^= 0xFF
    (folder / "model.pt").write_bytes(bytes(data))


DAMAGE = {
    "a flipped byte": _flip_a_byte,
    "a truncated file": lambda f: (f / "sub" / "model.onnx").write_text("onnx"),
    "a missing file": lambda f: (f / "model.pt").unlink(),
    "no manifest (a build that died before it was listed)": lambda f: (f / MANIFEST).unlink(),
    "a manifest of other inputs": lambda f: (f / MANIFEST).write_text(json.dumps(
        {**json.loads((f / MANIFEST).read_text()), "inputs": {"recipe": {"epochs": 2}}})),
    "an unreadable manifest": lambda f: (f / MANIFEST).write_text("{"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_partial_entry_is_built_again_never_used(tmp_path, damage):
    builder = Builder()
    folder = build_once(tmp_path / "m", INPUTS, builder)
    DAMAGE[damage](folder)
    rebuilt = build_once(tmp_path / "m", INPUTS, builder)
    assert builder.calls == 2
    manifest = json.loads((rebuilt / MANIFEST).read_text())
    assert manifest["inputs"] == INPUTS and (rebuilt / "model.pt").stat().st_size == 4096
    assert build_once(tmp_path / "m", INPUTS, builder) == rebuilt and builder.calls == 2


def test_a_build_that_fails_leaves_nothing_and_a_killed_builders_staging_is_removed(tmp_path):
    def failing(folder: Path) -> None:
        (folder / "model.pt").write_bytes(b"half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build_once(tmp_path / "m", INPUTS, failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock"]
    gone = subprocess_pid()
    abandoned = tmp_path / f".m.building-{gone}"
    abandoned.mkdir()
    (abandoned / "model.pt").write_bytes(b"half")
    assert remove_abandoned_builds(tmp_path) == [abandoned] and not abandoned.exists()
    mine = tmp_path / f".m.building-{os.getpid()}-not-a-pid"
    mine.mkdir()
    assert remove_abandoned_builds(tmp_path) == [] and mine.exists()


def subprocess_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _build_in_another_process(folder: str, log: str) -> None:
    def slow(staging: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (staging / "model.pt").write_text("weights")

    build_once(Path(folder), INPUTS, slow)


def test_two_processes_asking_at_once_build_it_once(tmp_path):
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_build_in_another_process, args=(str(tmp_path / "m"), str(log)))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    assert len(log.read_text().split()) == 1 and (tmp_path / "m" / "model.pt").read_text() == "weights"


def _package(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "__init__.py").write_text("")
    (root / "pkg" / "build.py").write_text("from pkg.sub import helper\nfrom . import util\n")
    (root / "pkg" / "sub" / "helper.py").write_text("def f():\n    from pkg import lazy\n    return lazy\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "pkg" / "lazy.py").write_text("Y = 1\n")
    (root / "pkg" / "unrelated.py").write_text("Z = 1\n")
    return root


def test_the_key_covers_every_module_the_build_imports_lazily_too_and_nothing_else(tmp_path):
    tree = _package(tmp_path)
    closure = source_closure(tree, ["pkg.build"], package="pkg")
    assert sorted(closure) == ["pkg/__init__.py", "pkg/build.py", "pkg/lazy.py", "pkg/sub/__init__.py",
                               "pkg/sub/helper.py", "pkg/util.py"]
    before = key_of({"code": closure})
    (tree / "pkg" / "unrelated.py").write_text("Z = 2\n")
    assert key_of({"code": source_closure(tree, ["pkg.build"], package="pkg")}) == before
    (tree / "pkg" / "lazy.py").write_text("Y = 2\n")
    assert key_of({"code": source_closure(tree, ["pkg.build"], package="pkg")}) != before


def test_a_reference_builds_key_holds_its_code_libraries_python_and_the_cpus_kernels():
    inputs = build_inputs("tutorial", "image-folder:/data")
    code = inputs["code"]
    assert {"optcv/training/train.py", "optcv/backends/onnx_export.py", "optcv/backends/onnxruntime_int8.py",
            "optcv/data.py", "optcv/measure/reference.py"} <= set(code)
    assert not any(path.startswith(("optcv/gate/", "optcv/report/", "optcv/cli/")) for path in code)
    machine = machine_inputs()
    assert inputs["machine"] == machine and machine["python"] == sys.version.split()[0]
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "numpy", "pillow"} <= set(machine["libraries"])
    assert "isa" in machine and "cpu_vendor" in machine
    other_cpu = {**inputs, "machine": {**machine, "isa": [f for f in machine["isa"] if "vnni" not in f] + ["x"]}}
    assert key_of(other_cpu) != key_of(inputs)


def test_the_gates_worker_builds_from_a_relative_data_folder_and_rebuilds_a_damaged_model(tmp_path, monkeypatch):
    """The README's test command names the data folder relatively (OPTCV_DATA_DIR=../shared/data/cifar10): the
    side's builder runs in a folder of its own and must still find it (it once failed: 'does not exist'). A damaged
    entry is built again instead of timed."""
    from conftest import make_image_folder
    from optcv.gate.config import build_recipes
    from optcv.gate.sides import HEAD_TREE, Side
    from optcv.gate.workers import build_artifacts

    make_image_folder(tmp_path / "data", train_per_class=10, test_per_class=50)  # the build evaluates on 500
    monkeypatch.chdir(tmp_path)
    data = Path("data")
    recipes = {"tutorial": dataclasses.replace(build_recipes(["tutorial"])["tutorial"], train_images=100)}
    side = Side("head", sys.executable, HEAD_TREE)
    (tmp_path / "work").mkdir()
    built = build_artifacts(side, tmp_path / "work", recipes, data, tmp_path / "cache")
    onnx_path = Path(built.models["tutorial"].onnx)
    good = onnx_path.read_bytes()
    onnx_path.write_bytes(good[: len(good) // 2])
    again = build_artifacts(side, tmp_path / "work", recipes, data, tmp_path / "cache")
    assert Path(again.models["tutorial"].onnx) == onnx_path and len(onnx_path.read_bytes()) == len(good)


def test_the_ci_cache_key_changes_with_the_build_code_and_not_with_the_rest(tmp_path):
    from optcv.gate.sides import HEAD_TREE
    from optcv.gate.workers import models_cache_key

    shutil.copytree(HEAD_TREE / "optcv", tmp_path / "optcv", ignore=shutil.ignore_patterns("__pycache__"))
    key = models_cache_key(tmp_path)
    assert key.startswith("optcv-models-") and key == models_cache_key(HEAD_TREE)
    with open(tmp_path / "optcv" / "gate" / "timing.py", "a") as timing:
        timing.write("\n# not part of any build\n")
    assert models_cache_key(tmp_path) == key
    with open(tmp_path / "optcv" / "training" / "train.py", "a") as train:
        train.write("\n# part of every build\n")
    assert models_cache_key(tmp_path) != key
