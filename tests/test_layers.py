"""The layering holds at run time too: a backend imports neither the gate, nor the report, nor matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["optcv.backends.pytorch", "optcv.backends.onnxruntime", "optcv.runtime"])
def test_a_backend_imports_neither_the_gate_nor_matplotlib(module):
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in sys.modules if m.startswith(('optcv.gate', 'optcv.report', 'matplotlib'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_workers_contract_forbids_every_optcv_module_outside_the_worker():
    """A module added to optcv is forbidden to the worker too: the contract's list is every module there is."""
    import pkgutil
    from pathlib import Path

    import optcv

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    root = Path(optcv.__file__).resolve().parents[1]
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    worker = next(c for c in contracts if c.get("source_modules") == ["optcv.gate.worker"])
    top = {f"optcv.{m.name}" for m in pkgutil.iter_modules(optcv.__path__)} - {"optcv.gate", "optcv.__main__"}
    gate = {f"optcv.gate.{m.name}" for m in pkgutil.iter_modules([str(root / "optcv" / "gate")])}
    gate.discard("optcv.gate.worker")
    assert set(worker["forbidden_modules"]) == top | gate


def test_the_worker_runs_in_an_interpreter_whose_optcv_is_another_tree(tmp_path):
    """Loaded by its path, the harness leaves `optcv` to the side: with only a stub optcv on the path, the build
    worker reports that stub's file as the optcv it imported."""
    import os

    from optcv.gate.worker.protocol import Build, Built, decode, encode
    from optcv.gate.workers import WORKER_SCRIPT

    (tmp_path / "optcv").mkdir()
    (tmp_path / "optcv" / "__init__.py").write_text("")
    request = encode(Build({}, None, str(tmp_path / "cache"), str(tmp_path)))
    done = subprocess.run([sys.executable, str(WORKER_SCRIPT), "build"], input=request, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    built = decode(done.stdout.splitlines()[0])
    assert isinstance(built, Built) and built.optcv_file == str((tmp_path / "optcv" / "__init__.py").resolve())
