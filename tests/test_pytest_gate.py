"""`pytest --gate-against REV` on a repository with no model in it: ordinary pytest-benchmark tests, each timed in
both revisions by each side's own pytest sessions, run as a user runs it (a fresh pytest in their repository).
What can and cannot be paired is checked here; what the gate catches, alone on the machine, in
benchmarks/test_pytest_gate.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Three ordinary benchmarks of the kind a user has: a NumPy resize-and-normalise, a pure-Python post-processing step
# over detections, and (in a file of its own, so a session of the other two does not import torch) a torchvision
# transform. `{extra}` is where a revision makes one of them slower by a real code change.
TESTS = '''\
import numpy as np

IMAGE = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
DETECTIONS = [(i % 7, (i * 37) % 100 / 100, i, i + 10) for i in range(400)]


def resize_and_normalise(image):
    small = image[::2, ::2].astype(np.float32)
    return (small - small.mean()) / (small.std() + 1e-6)


def keep_confident(detections, threshold=0.5):
    kept = [d for d in detections if d[1] >= threshold]
{extra}    return sorted(kept, key=lambda d: -d[1])


def test_resize(benchmark):
    out = benchmark(resize_and_normalise, IMAGE)
    assert out.shape == (32, 32, 3)


def test_postprocess(benchmark):
    kept = benchmark.pedantic(keep_confident, args=(DETECTIONS,), rounds=5, iterations=3)
    assert all(d[1] >= 0.5 for d in kept)
'''
TRANSFORM_TEST = '''\
import torch
from torchvision.transforms import v2

PHOTO = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
TO_MODEL_INPUT = v2.Compose([v2.Resize(40, antialias=True), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])])


def test_transform(benchmark):
    assert benchmark(TO_MODEL_INPUT, PHOTO).shape == (3, 32, 32)
'''
# An extra pass over the kept detections, three times: about twice the step's work.
SLOWER = "    for _ in range(3):\n        kept = [d for d in kept if d[1] >= threshold]\n"


def pytest_in(repo: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", *args],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def plain_repository(root: Path) -> Path:
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, {"test_speed.py": TESTS.format(extra=""), "test_transform.py": TRANSFORM_TEST}, "three benchmarks")
    return root


BASE_ONLY = '''\
import pytest


def test_gone(benchmark):
    benchmark(sum, range(100))


def test_fails_on_base(benchmark):
    benchmark(sum, range(100))
    assert False, "the base's assertion"


def test_skipped_on_base(benchmark):
    pytest.skip("not on the base")


@pytest.fixture
def numbers():
    return list(range(100))


def test_fixture_changes(benchmark, numbers):
    benchmark(sum, numbers)
'''

HEAD_ONLY = '''\
import pytest


def test_new(benchmark):
    benchmark(sum, range(100))


def test_fails_on_base(benchmark):
    benchmark(sum, range(100))


def test_skipped_on_base(benchmark):
    benchmark(sum, range(100))


@pytest.fixture
def values():
    return list(range(100))


def test_fixture_changes(benchmark, values):
    benchmark(sum, values)
'''


def test_what_cannot_be_paired_is_said_per_test_and_is_not_a_failure(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"test_pairs.py": BASE_ONLY, "test_broken.py": "import not_a_module\n"}, "base")
    commit(repo, {"test_pairs.py": HEAD_ONLY, "test_broken.py": "def test_now_collects(benchmark):\n"
                                                                 "    benchmark(sum, range(10))\n"}, "head")
    # A threshold no timing noise reaches: this test is about pairing, not speed (that is benchmarks/).
    done = pytest_in(repo, "--gate-against", "HEAD~1", "--gate-json", "gate.json", "--gate-threshold", "50")
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    lines = [line for line in out.splitlines() if line.startswith("- not gated:") or line.startswith("- note:")]
    said = "\n".join(lines)
    for node, why in [("test_pairs.py::test_new", "new in the head"),
                      ("test_pairs.py::test_gone", "gone from the head"),
                      ("test_pairs.py::test_fails_on_base", "fails on the base"),
                      ("test_pairs.py::test_skipped_on_base", "skipped on the base"),
                      ("test_broken.py::test_now_collects", "does not collect")]:
        assert any(node in line and why in line for line in lines), (node, said)
    assert "the base's assertion" in said and "not on the base" in said and "not_a_module" in said, said
    assert any("test_fixture_changes" in line and "fixtures differ" in line and "numbers" in line for line in lines)
    tests = {t["node"]: t for t in json.loads((repo / "gate.json").read_text())["tests"]}
    assert tests["test_pairs.py::test_new"]["unpaired"] == "new_in_head"
    assert tests["test_pairs.py::test_fixture_changes"]["gated"] is True
    # A test that fails on the head fails the run, as it would without the gate.
    commit(repo, {"test_pairs.py": HEAD_ONLY.replace("benchmark(sum, values)", "benchmark(sum, values)\n"
                                                                               "    assert False, 'head broke'")},
           "break the head")
    done = pytest_in(repo, "--gate-against", "HEAD~1", "-k", "fixture_changes", "--gate-threshold", "50")
    assert done.returncode == 1 and "head broke" in done.stdout, done.stdout[-3000:]


def test_a_revision_that_does_not_exist_stops_pytest_with_one_line(tmp_path):
    repo = plain_repository(tmp_path / "repo")
    done = pytest_in(repo, "--gate-against", "no-such-branch")
    assert done.returncode == 4, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "optcv:" in line]
    assert len(errors) == 1 and "no-such-branch" in errors[0] and "Traceback" not in done.stderr, done.stderr


PINNED = '''\
import os

LOG = {log!r}


def where(tag):
    with open(LOG, "a") as log:
        log.write(tag + " " + ",".join(map(str, sorted(os.sched_getaffinity(0)))) + "\\n")


def test_timed(benchmark):
    benchmark(where, "timed")
    where("after")
'''


def test_the_timed_thread_serves_on_one_cpu_and_gets_its_cpus_back(tmp_path):
    """Every session runs the benchmarked callable's timed calls on the same one CPU (the last, as the gate's
    one-thread cases), like the gate's own workers; the test goes on with the CPUs it had."""
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) > 1, "this check needs a machine with two CPUs or more"
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    log = tmp_path / "where.log"
    commit(repo, {"test_pin.py": PINNED.format(log=str(log))}, "one benchmark")
    done = pytest_in(repo, "--gate-against", "HEAD", "--gate-threshold", "50", "--gate-even-if-unchanged")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    seen: dict[str, set[str]] = {}
    for tag, where in (line.split() for line in log.read_text().splitlines()):
        seen.setdefault(tag, set()).add(where)
    all_cpus = ",".join(map(str, cpus))
    assert seen["timed"] - {all_cpus} == {str(cpus[-1])}, seen  # the calibration's first calls ran unpinned
    assert seen["after"] == {all_cpus}, seen


def test_a_commit_that_changes_no_code_is_not_timed_and_says_so(tmp_path):
    """Base and head hold the same code (a README-only commit): nothing is timed A/B, the summary says why, the
    tests run as pytest-benchmark alone; --gate-even-if-unchanged times them anyway."""
    repo = plain_repository(tmp_path / "repo")
    commit(repo, {"README.md": "three benchmarks\n"}, "a README")
    done = pytest_in(repo, "--gate-against", "HEAD~1", "--gate-json", "same.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "hold the same code" in done.stdout and "3 passed" in done.stdout, done.stdout[-3000:]
    said = json.loads((repo / "same.json").read_text())
    assert said["same_code"] and said["tests"] == []
    done = pytest_in(repo, "--gate-against", "HEAD~1", "--gate-json", "timed.json", "--gate-even-if-unchanged",
                     "-k", "resize")
    assert done.returncode == 0, done.stdout[-3000:]
    timed = json.loads((repo / "timed.json").read_text())
    assert timed["same_code"] is None and [t["gated"] for t in timed["tests"]] == [True]


SESSION_ARGS_CONFTEST = '''\
import pytest


def pytest_addoption(parser):
    parser.addoption("--size", type=int, default=1)


@pytest.hookimpl(optionalhook=True)
def pytest_gate_session_args(config):
    return ["--size", str(config.getoption("size"))]
'''
SESSION_ARGS_TEST = '''\
import os


def test_size(benchmark, request):
    with open({log!r}, "a") as log:
        log.write(f"{{os.getpid()}} {{request.config.getoption('size')}}\\n")
    assert benchmark(sum, range(request.config.getoption("size"))) >= 0
'''


def test_a_suites_conftest_passes_its_own_options_to_every_session(tmp_path):
    """A conftest's pytest_gate_session_args reaches every side's session (optcv's own suite passes its tier so)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    log = tmp_path / "sizes.log"
    commit(repo, {"conftest.py": SESSION_ARGS_CONFTEST, "test_size.py": SESSION_ARGS_TEST.format(log=str(log))},
           "a benchmark with an option")
    done = pytest_in(repo, "--gate-against", "HEAD", "--gate-even-if-unchanged", "--size", "7",
                     "--gate-threshold", "50")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    seen = [line.split() for line in log.read_text().splitlines()]
    assert len({pid for pid, _ in seen}) >= 8 and {size for _, size in seen} == {"7"}, seen


ONLY_OUTSIDE_THE_GATE = '''\
import os


def test_needs_what_only_this_run_has(benchmark):
    # As a test whose fixture reads a path relative to where pytest started: it breaks only in the gate's sessions.
    assert "OPTCV_GATE_FDS" not in os.environ, "needs this run's environment"
    benchmark(sum, range(10))
'''


def test_a_test_that_fails_in_the_heads_sessions_fails_even_where_this_run_would_pass(tmp_path):
    """Nothing compared because the head's sessions fail is a failure of the test, naming the sessions' error,
    never a pass of the test as pytest-benchmark alone ran it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"test_env.py": ONLY_OUTSIDE_THE_GATE}, "a test that breaks in the gate")
    done = pytest_in(repo, "--gate-against", "HEAD", "--gate-even-if-unchanged")
    assert done.returncode == 1, done.stdout[-3000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "test_needs_what_only_this_run_has" in failed[0], failed
    assert "fails in the gate's head sessions" in done.stdout, done.stdout[-3000:]
    assert "needs this run's environment" in done.stdout, done.stdout[-3000:]
    done = pytest_in(repo, "--gate-against", "none")
    assert done.returncode == 0, done.stdout[-3000:]  # the same test, without the gate


def test_a_profile_of_a_call_with_many_operators_holds_fewer_calls_than_asked():
    """Reading torch.profiler's events costs about 70 µs each: a failing test's profiles are held to a budget of
    events, the calls fewer where a call runs many operators, and the reply says how many it profiled."""
    import torch

    from optcv.gate.worker.pytest_session import PROFILE_EVENTS, PROFILE_PROBE_CALLS, Samples

    x = torch.ones(8)

    def many_operators():
        y = x
        for _ in range(40):
            y = y + 1
        return y

    answer = Samples(many_operators, (), {}).profile(10_000)
    assert PROFILE_PROBE_CALLS <= answer.calls <= PROFILE_EVENTS / 40, answer.calls
    assert answer.ops_us_per_call["aten::add"] > 0
    few = Samples(torch.neg, (x,), {}).profile(50)
    assert few.calls == 50 and few.ops_us_per_call["aten::neg"] > 0
