"""Each optional dependency, run without it: what needs it says so in one line naming what to install, exits 2
(pytest: a usage error, or a skip or failure naming the package), and shows no traceback.

The README's install (`pip install -e '.[dev,openvino]'`) leaves out optcv[postgres], and a machine may lack
Debian's valgrind or chromium. A Python package is hidden the way an absent one imports (a sitecustomize that sets
sys.modules[name] = None, so `import` and importlib.util.find_spec both see nothing); a program by a PATH without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from optcv.errors import MissingDependency, missing_optional_module

ROOT = Path(__file__).resolve().parents[1]


def _without_modules(tmp_path: Path, *modules: str) -> dict[str, str]:
    folder = tmp_path / "hide"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in modules))
    inherited = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(folder), str(ROOT), inherited) if p)}


def _without_programs(tmp_path: Path, *programs: str) -> dict[str, str]:
    """A PATH of links to every program on this one except `programs` (git, cc and the shell stay)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            link = folder / name
            if name not in programs and not link.exists() and os.access(os.path.join(directory, name), os.X_OK):
                link.symlink_to(os.path.join(directory, name))
    return {**os.environ, "PATH": str(folder)}


def _optcv(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optcv", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def _one_line_naming(done: subprocess.CompletedProcess, *fix: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and all(part in lines[0] for part in fix), lines
    return lines[0]


def test_psycopg_missing_the_history_and_tune_name_optcv_postgres(tmp_path, tiny_data_dir):
    env = _without_modules(tmp_path, "psycopg", "psycopg2")
    url = "postgresql://optcv@127.0.0.1:9/none"
    history = _optcv(env, "history", "runs", "--history", url)
    line = _one_line_naming(history, "psycopg", "pip install 'optcv[postgres]'")
    assert line.startswith("optcv history: error: the history database postgresql+psycopg://")
    _one_line_naming(_optcv(env, "tune", "--data-dir", str(tiny_data_dir), "--storage", url, "--trials", "1",
                            "--out", str(tmp_path / "tune")), "pip install 'optcv[postgres]'")
    assert not (tmp_path / "tune" / "study.json").exists()


def test_openvino_missing_evaluate_and_the_gate_name_optcv_openvino(tmp_path, tiny_tutorial, tiny_data_dir):
    env = _without_modules(tmp_path, "openvino")
    _one_line_naming(_optcv(env, "evaluate", str(tiny_tutorial.checkpoint), str(tiny_tutorial.onnx), "--backends",
                            "openvino", "--data-dir", str(tiny_data_dir)), "pip install 'optcv[openvino]'")
    # The gate says so before it builds anything, naming the case and the way to leave the backend out.
    gate = _optcv(env, "gate", "--base-python", sys.executable, "--models", "tutorial", "--cases",
                  "tutorial/openvino/b1/t1", "--even-if-unchanged", "--no-history")
    _one_line_naming(gate, "tutorial/openvino/b1/t1", "pip install 'optcv[openvino]'", "--backends")


def test_valgrind_missing_the_instruction_count_names_the_package_before_building(tmp_path, tiny_data_dir):
    env = {**_without_programs(tmp_path, "valgrind"), "OPTCV_DATA_DIR": str(tiny_data_dir),
           "OPTCV_CACHE_DIR": str(tmp_path / "cache")}
    done = _optcv(env, "gate", "--base-python", sys.executable, "--models", "tutorial", "--cases",
                  "tutorial/onnxruntime/b1/t1", "--measure", "instructions", "--even-if-unchanged", "--no-history")
    _one_line_naming(done, "valgrind", "apt-get install valgrind")
    assert not (tmp_path / "cache" / "gate-artifacts").exists()


def test_chromium_missing_the_dashboard_test_names_it_skipping_here_and_failing_where_nothing_may_skip(tmp_path):
    env = _without_programs(tmp_path, "chromium", "chromium-browser")
    test = "tests/test_history.py::test_the_dashboard_renders_in_a_real_browser_offline"
    pytest_args = [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts="]
    skipped = subprocess.run(pytest_args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**env, "CI": "false", "OPTCV_NO_SKIP": "0"})
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    assert "install Debian's chromium (apt-get install chromium)" in skipped.stdout
    failed = subprocess.run(pytest_args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**env, "CI": "false", "OPTCV_NO_SKIP": "1"})
    assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout[-2000:]
    assert "install Debian's chromium (apt-get install chromium)" in failed.stdout


def test_pytest_benchmark_missing_pytest_optcv_is_a_usage_error_naming_optcv_pytest(tmp_path):
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "optcv.plugin", "--optcv", "-q", "-p",
                           "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 4 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "pip install 'optcv[pytest]'" in done.stderr


def test_an_optional_package_a_library_re_raised_as_its_own_import_error_is_still_named():
    """Optuna and SQLAlchemy wrap a missing driver in an ImportError of their own: the cause is followed."""
    try:
        try:
            raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
        except ImportError as missing:
            raise ImportError("Failed to import DB access module") from missing
    except ImportError as wrapped:
        found = missing_optional_module(wrapped, "storage 'postgresql://x'")
    assert isinstance(found, MissingDependency) and found.install == "pip install 'optcv[postgres]'"
    assert missing_optional_module(ModuleNotFoundError("No module named 'yaml'", name="yaml"), "x") is None
