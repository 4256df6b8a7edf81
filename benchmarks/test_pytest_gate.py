"""`pytest --gate-against REV` catches a real slowdown of an ordinary pytest-benchmark test, and its self-test's
slowdown is what it says: timed, so here (alone on the machine), not in tests/."""

from __future__ import annotations

import json

import pytest

from optcv.history.ingest import record_of_file
from optcv.history.records import CHANGE_PCT
from tests.test_pytest_gate import SLOWER, TESTS, commit, git, plain_repository, pytest_in

# The gate's boundary tests: in the pull-request tier only when the gate's code changed (benchmarks/conftest.py).
pytestmark = pytest.mark.gate_change


def test_a_real_slowdown_fails_that_test_alone_naming_both_sides_and_the_json_carries_both(tmp_path):
    repo = plain_repository(tmp_path / "repo")
    commit(repo, {"test_speed.py": TESTS.format(extra=SLOWER)}, "filter the detections again")
    done = pytest_in(repo, "--gate-against", "HEAD~1", "--benchmark-json", "bench.json", "--gate-json", "gate.json")
    out = done.stdout
    assert done.returncode == 1, out[-4000:] + done.stderr[-2000:]
    assert "1 failed, 2 passed" in out, out[-3000:]
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "test_postprocess" in failed[0] and "SPEED REGRESSION" in failed[0], failed
    said = next(line for line in out.splitlines() if line.startswith("SPEED REGRESSION: test_speed.py::test_postproc"))
    assert "95 % CI +" in said and "µs → head" in said and "threshold 3 %" in said, said
    benchmarks = {b["name"]: b for b in json.loads((repo / "bench.json").read_text())["benchmarks"]}
    gate = benchmarks["test_postprocess"]["extra_info"]["optcv_gate"]
    assert gate["verdict"] == "regression" and gate["finding"]["ci_low_pct"] > 0
    assert gate["finding"]["head_median_us"] > gate["finding"]["base_median_us"]
    assert benchmarks["test_resize"]["extra_info"]["optcv_gate"]["verdict"] != "regression"
    assert benchmarks["test_resize"]["stats"]["rounds"] >= 20  # the head's rounds as pytest-benchmark's statistics
    tests = {t["node"]: t for t in json.loads((repo / "gate.json").read_text())["tests"]}
    assert tests["test_speed.py::test_postprocess"]["verdict"] == "regression"
    assert tests["test_transform.py::test_transform"]["gated"] is True
    # `optcv history import` reads the change beside the latency, and the run as a failed gate.
    record = record_of_file(repo / "bench.json")
    changes = {m.case: m for m in record.measurements if m.metric == CHANGE_PCT}
    assert record.passed is False and sorted(changes) == ["test_postprocess", "test_resize", "test_transform"]
    assert changes["test_postprocess"].failed and not changes["test_transform"].failed


def test_the_self_tests_slowdown_slows_the_heads_timed_calls_by_what_it_says(tmp_path):
    """`--gate-slowdown PCT` on unchanged code: the head's calls read about PCT % slower and the test fails; with 0
    the same test passes (the same busy-wait check runs on both sides)."""
    repo = plain_repository(tmp_path / "repo")
    done = pytest_in(repo, "--gate-against", "HEAD", "-k", "resize", "--gate-slowdown", "20",
                     "--gate-json", "slow.json")
    assert done.returncode == 1, done.stdout[-3000:]
    finding = json.loads((repo / "slow.json").read_text())["tests"][0]["finding"]
    assert 14 < finding["change_pct"] < 26 and finding["verdict"] == "regression", finding
    done = pytest_in(repo, "--gate-against", "HEAD", "-k", "resize", "--gate-slowdown", "0",
                     "--gate-json", "same.json")
    assert done.returncode == 0, done.stdout[-3000:]
    assert json.loads((repo / "same.json").read_text())["tests"][0]["verdict"] != "regression"


TORCH_TEST = '''\
import torch

X = torch.randn(64, 256)
W = torch.randn(256, 256)


def head(x):
    y = x @ W
{extra}    return y.relu()


def test_head(benchmark):
    assert benchmark(head, X).shape == (64, 256)
'''
# A real change of the kind a user makes: an extra elementwise pass on every call.
EXTRA_OPS = "    y = torch.tanh(y) * 1.5\n"


def test_a_failing_test_that_runs_pytorch_names_the_operator_that_grew(tmp_path):
    """Where the benchmarked callable runs PyTorch operators, a regression's line names those whose time changed
    (from torch.profiler in the sides' sessions, as `optcv gate` does for its cases)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"test_torch.py": TORCH_TEST.format(extra="")}, "a matmul and a relu")
    commit(repo, {"test_torch.py": TORCH_TEST.format(extra=EXTRA_OPS)}, "and a tanh")
    done = pytest_in(repo, "--gate-against", "HEAD~1", "--gate-json", "gate.json")
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    said = next(line for line in done.stdout.splitlines() if line.startswith("SPEED REGRESSION: test_torch.py"))
    assert "; where: " in said and "aten::tanh" in said, said
    profile = json.loads((repo / "gate.json").read_text())["tests"][0]["finding"]["profile"]
    grew = [c["operator"] for c in profile["changes"] if c["ci_low_us"] > 0]  # the largest change first
    assert "aten::tanh" in grew[:3] and "aten::mm" not in grew[:2], profile["changes"]
