"""The README's library examples run as they stand: each in a fresh interpreter, in a folder laid out as the
README's first command leaves it (a small synthetic model and data set stand in for the real ones)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def library_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Library\n"):]
    section = section[:section.index("\n### ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_example(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def quick_folder(tmp_path_factory, tiny_tutorial) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    models = folder / "runs" / "quick" / "models"
    models.mkdir(parents=True)
    shutil.copyfile(tiny_tutorial.checkpoint, models / "tutorial.pt")
    shutil.copyfile(tiny_tutorial.onnx, models / "tutorial.onnx")
    return folder


def test_the_readme_has_three_library_examples():
    assert len(library_examples()) == 3


def test_time_two_backends(quick_folder, tiny_data_dir):
    done = run_example(library_examples()[0], quick_folder, {"OPTCV_DATA_DIR": str(tiny_data_dir)})
    assert done.returncode == 0, done.stderr
    assert re.search(r"^onnxruntime: \d+\.\d\dx pytorch per image \(95 % CI", done.stdout, flags=re.M), done.stdout


def test_check_parity(quick_folder, tiny_data_dir):
    done = run_example(library_examples()[1], quick_folder, {"OPTCV_DATA_DIR": str(tiny_data_dir)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "parity passed (0 of 40 differ)"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=optcv", "-c", "user.email=optcv@localhost", "-C", str(repo), *args],
                   check=True, capture_output=True)


def test_gate_two_revisions(tmp_path):
    """In a repository whose last commit changed only its README, the gate says there is nothing to time."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "optcv", repo / "optcv", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "README.md").write_text("first\n")
    _git(repo, "init", "--quiet")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "first")
    (repo / "README.md").write_text("second\n")
    _git(repo, "commit", "--quiet", "-am", "README only")
    done = run_example(library_examples()[2], repo, {"PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert "nothing to time (base and head hold the same optcv code that the cases run)" in done.stdout
