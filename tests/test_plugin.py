"""The pytest plugin, run as a user runs it: `pytest --optcv` in their repository, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.user_repo import TINY, write_user_repo

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--benchmark-min-rounds", "3", "--benchmark-max-time", "0.01", "--benchmark-warmup", "off"]


def _pytest(repo: Path, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    # A fresh pytest, as the user starts it: none of this run's own (an xdist worker's PYTEST_XDIST_WORKER made
    # pytest-benchmark write no JSON).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OPTCV_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:xdist", *args],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_pytest_optcv_runs_the_declared_models_parity_and_latency_cases_into_benchmark_json(tmp_path):
    repo = write_user_repo(tmp_path / "repo").parent
    done = _pytest(repo, "--optcv", "--benchmark-json", "bench.json", *QUICK, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "5 passed in" in done.stdout  # one parity case (onnxruntime against pytorch) and four latency cases
    benchmarks = json.loads((repo / "bench.json").read_text())["benchmarks"]
    assert sorted(b["extra_info"]["optcv_case"] for b in benchmarks) == [
        "tiny/onnxruntime/b1/t1", "tiny/onnxruntime/b4/t1", "tiny/pytorch/b1/t1", "tiny/pytorch/b4/t1"]
    assert all(b["stats"]["rounds"] >= 3 and b["group"] == "optcv tiny" for b in benchmarks)
    # -k selects among them as among any tests.
    done = _pytest(repo, "--optcv", "-k", "parity", *QUICK, cache=tmp_path / "cache")
    assert done.returncode == 0 and "1 passed, 4 deselected" in done.stdout, done.stdout[-2000:]


def test_without_its_flags_the_plugin_adds_nothing(tmp_path):
    repo = write_user_repo(tmp_path / "repo").parent
    (repo / "test_theirs.py").write_text("def test_theirs():\n    assert True\n")
    done = _pytest(repo, cache=tmp_path / "cache")
    assert done.returncode == 0 and "1 passed" in done.stdout and "optcv" not in done.stdout, done.stdout


def test_a_bad_declaration_stops_pytest_with_one_line_naming_it(tmp_path):
    repo = write_user_repo(tmp_path / "repo", TINY.replace("batch_sizes = [1, 4]", "batch_sizes = [0]")).parent
    done = _pytest(repo, "--optcv", cache=tmp_path / "cache")
    assert done.returncode == 4, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "optcv:" in line]
    assert len(errors) == 1 and "batch_sizes" in errors[0] and "Traceback" not in done.stderr, done.stderr
    write_user_repo(repo)
    done = _pytest(repo, "--optcv", "--optcv-models", "nope", cache=tmp_path / "cache")
    assert done.returncode == 4 and "no model 'nope' is declared" in done.stderr


def test_optcv_gate_against_is_optcv_with_gate_against_on_the_declared_models_cases(tmp_path):
    """`--optcv-gate-against REV` (the first spelling) adds the declared models' cases and gates them as any
    benchmark: a commit that changed none of their inputs is not timed, says so, and the cases run alone."""
    repo = write_user_repo(tmp_path / "repo").parent
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "their model")
    (repo / "README.md").write_text("their app\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a README")
    done = _pytest(repo, "--optcv-gate-against", "HEAD~1", "--optcv-gate-json", "gate.json", *QUICK,
                   cache=tmp_path / "cache")
    assert done.returncode == 0 and "5 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
    assert "hold the same code" in done.stdout, done.stdout[-3000:]
    assert json.loads((repo / "gate.json").read_text())["same_code"]
    collected = _pytest(repo, "--optcv-gate-against", "HEAD~1", "--collect-only", cache=tmp_path / "cache").stdout
    assert "test_optcv_latency[tiny/onnxruntime/b1/t1]" in collected, collected
