"""The gate's sides and workers: their trees, paths and interpreters, set-up orders and hash seeds, and the
re-test of a failing or undecided case with fresh workers."""

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from optcv.errors import (
    GateSetupError,
)
from optcv.gate.config import GateConfig
from optcv.gate.sides import Side, check_python
from optcv.gate.verdict import (
    Thresholds,
    judge,
)
from tests.gate_helpers import noisy_rounds


def test_a_sides_workers_keep_the_users_pythonpath_after_the_sides_tree(tmp_path, monkeypatch):
    """A monorepo's packages on PYTHONPATH stay importable in the workers, and the side's optcv still wins over an
    optcv found there."""
    from optcv.gate.sides import HEAD_TREE, Side

    theirs = tmp_path / "monorepo"
    (theirs / "optcv").mkdir(parents=True)
    (theirs / "optcv" / "__init__.py").write_text("raise ImportError('the wrong optcv')\n")
    (theirs / "their_package.py").write_text("WHERE = 'monorepo'\n")
    monkeypatch.setenv("PYTHONPATH", str(theirs))
    script = "import their_package, optcv; print(their_package.WHERE, optcv.__file__)"
    env = Side("head", sys.executable, HEAD_TREE).env()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["monorepo", str(HEAD_TREE / "optcv" / "__init__.py")], done.stderr


def test_the_head_runs_from_a_copy_of_the_working_tree_shaped_like_the_bases_worktree(tmp_path):
    """Both sides' trees resolve to paths of one length and shape (a tree elsewhere shifted the head's heap: a
    side-level offset); the copy holds the working tree as it is, uncommitted changes and new files, and not what
    .gitignore leaves out; what the gate reports is still the user's tree."""
    from optcv.gate.sides import sides_for

    repo = tmp_path / "their clone"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "model.py").write_text("WIDTH = 1\n")
    (repo / ".gitignore").write_text("big/\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"],
                   check=True)
    (repo / "pkg" / "model.py").write_text("WIDTH = 2\n")  # uncommitted
    (repo / "pkg" / "new.py").write_text("NEW = True\n")  # untracked
    (repo / "big").mkdir()
    (repo / "big" / "weights.bin").write_bytes(b"0" * 10)  # ignored
    with sides_for("HEAD", None, repo / "pkg", repo, user_repository=True, copy_head=True) as (base, head):
        assert len(str(base.tree.resolve())) == len(str(head.tree.resolve())) and head.tree != repo / "pkg"
        assert base.tree.name == head.tree.name == "pkg"
        assert (head.tree / "model.py").read_text() == "WIDTH = 2\n" and (head.tree / "new.py").is_file()
        assert (base.tree / "model.py").read_text() == "WIDTH = 1\n"
        assert not (head.tree.parent / "big").exists()
        assert head.describe()["tree"] == str((repo / "pkg").resolve()) and head.source_tree == (repo / "pkg").resolve()
    with sides_for("HEAD", None, repo / "pkg", repo, user_repository=True) as (_, in_place):
        assert in_place.tree == (repo / "pkg").resolve()


def test_every_worker_pair_runs_its_sides_from_trees_of_its_own(tmp_path):
    """Each pair's trees are copies of their side's (so a tree's files and paths vary between pairs, where the
    interval over pairs sees them), as long on both sides; a large file is linked, what git ignores left out; a
    folder of the tree on the side's path (a src layout) is the copy's."""
    from optcv.gate.sides import LINKED_FILE_BYTES, pair_tree

    repo = tmp_path / "repo"
    (repo / "optcv").mkdir(parents=True)
    (repo / "optcv" / "__init__.py").write_text("X = 1\n")
    (repo / "weights.bin").write_bytes(b"0" * (LINKED_FILE_BYTES + 1))
    (repo / ".gitignore").write_text("scratch/\n")
    (repo / "scratch").mkdir()
    (repo / "scratch" / "notes.py").write_text("")
    (repo / "optcv" / "__pycache__").mkdir()
    (repo / "optcv" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    trees = {(label, pair): pair_tree(Side(label, sys.executable, repo), f"0-{pair}", work).tree
             for label in ("base", "head") for pair in (0, 1)}
    assert len(set(trees.values())) == 4
    assert len(str(trees["base", 0])) == len(str(trees["head", 0]))
    for tree in trees.values():
        assert (tree / "optcv" / "__init__.py").read_text() == "X = 1\n" and not (tree / "optcv").is_symlink()
        assert (tree / "weights.bin").is_symlink() and (tree / "weights.bin").resolve() == repo / "weights.bin"
        assert not (tree / "scratch").exists() and not (tree / "optcv" / "__pycache__").exists()
    (trees["head", 1] / "optcv" / "__init__.py").write_text("X = 2\n")  # an existing pair tree is kept
    assert pair_tree(Side("head", sys.executable, repo), "0-1", work).tree == trees["head", 1]
    assert (trees["head", 1] / "optcv" / "__init__.py").read_text() == "X = 2\n"
    on_path = Side("head", sys.executable, repo, extra_path=(repo / "src", tmp_path / "injected"))
    assert pair_tree(on_path, "0-1", work).extra_path == (trees["head", 1] / "src", tmp_path / "injected")


def test_a_missing_base_interpreter_is_a_set_up_error(tmp_path):
    with pytest.raises(GateSetupError, match="base interpreter"):
        check_python(str(tmp_path / "no-python"))


class FakeSessionPool:
    """Both sides' sessions, every test collected and ready at its benchmark call; the pools made, in order."""
    made: list[tuple[list[str], int]] = []

    def __init__(self, sides, nodes, config, workdir, session=None, attempt=0):
        FakeSessionPool.made.append(([s.label for s in sides], attempt))
        self.workers = [SimpleNamespace(side=s, collected={n: [] for n in nodes}, others=(), errors={},
                                        attempt=attempt) for s in sides for _ in range(2)]

    def side_workers(self, label):
        return [w for w in self.workers if w.side.label == label]

    def wait(self, node):
        return {i: SimpleNamespace(ready=True, reports=[]) for i in range(len(self.workers))}

    def release(self, node, indices):
        return {i: [] for i in indices}

    def close(self):
        pass


def test_a_failing_or_undecided_test_is_timed_again_by_fresh_sessions_and_judged_on_both_pools(tmp_path,
                                                                                                 monkeypatch):
    from optcv.gate import pytest_ab, timing

    # Per case, each pool's two session pairs' head ÷ base: a real +5 % that one pool's pairs read +7 and +3.5,
    # noise that one pool reads +8 and -1, a confirmed regression, a real +5 % that fails its first pass and
    # whose re-test alone (+9 and +1: t with 1 degree of freedom) would not, a first-pass failure that fresh
    # processes read as nothing, and a case with nothing to re-test.
    reads = {"u/openvino/b1/t1": ((1.07, 1.035), (1.055, 1.045)), "n/openvino/b1/t1": ((1.08, 0.99), (1.0, 0.995)),
             "a/pytorch/b1/t1": ((1.06, 1.06), (1.05, 1.05)), "f/pytorch/b1/t1": ((1.07, 1.06), (1.09, 1.01)),
             "g/pytorch/b1/t1": ((1.05, 1.045), (1.0, 0.99)), "c/pytorch/b1/t1": ((1.0, 1.0),)}
    def fake_time_case(workers, node, config, rng):
        case = node[node.index("[") + 1:-1]
        attempt = workers[0].attempt  # the first pool's, or a re-test's
        rounds = 40 - 10 * attempt
        base = [noisy_rounds(rounds, seed=10 * attempt + i) for i in range(2)]
        head = [b * r * np.exp(np.random.default_rng(i).normal(0, 0.005, rounds))
                for i, (b, r) in enumerate(zip(base, reads[case][attempt], strict=True))]
        return timing.CaseSamples(node, 10, base, head)

    monkeypatch.setattr(pytest_ab, "SessionPool", FakeSessionPool)
    monkeypatch.setattr(pytest_ab, "time_case", fake_time_case)
    (tmp_path / "test_x.py").write_text("")
    side = Side("base", sys.executable, tmp_path)
    nodes = [f"test_x.py::test_latency[{case}]" for case in reads]

    def gate_all(config):
        FakeSessionPool.made = []
        gate = pytest_ab.PytestGate(side, dataclasses.replace(side, label="head"), nodes, config, Thresholds(),
                                    tmp_path)
        gate.start()
        return {o.node[o.node.index("[") + 1:-1]: o for o in map(gate.run, nodes)}

    outcomes = gate_all(GateConfig(profile_ms=0))
    final = {case: o.finding for case, o in outcomes.items()}
    first = {case: o.first_pass for case, o in outcomes.items() if o.first_pass is not None}
    # One pool for the run, then a fresh one per re-tested test, head first.
    assert FakeSessionPool.made == [(["base", "head"], 0)] + [(["head", "base"], 1)] * 5
    assert sorted(first) == ["a/pytorch/b1/t1", "f/pytorch/b1/t1", "g/pytorch/b1/t1", "n/openvino/b1/t1",
                             "u/openvino/b1/t1"]
    assert first["u/openvino/b1/t1"].undecided and first["n/openvino/b1/t1"].undecided
    assert all(first[c].failed for c in ("a/pytorch/b1/t1", "f/pytorch/b1/t1", "g/pytorch/b1/t1"))
    assert final["u/openvino/b1/t1"].failed and final["u/openvino/b1/t1"].passes == 2
    assert 4 < final["u/openvino/b1/t1"].change_pct < 6 and len(final["u/openvino/b1/t1"].pair_changes_pct) == 4
    assert not final["n/openvino/b1/t1"].failed and final["n/openvino/b1/t1"].passes == 2
    assert final["a/pytorch/b1/t1"].failed and final["a/pytorch/b1/t1"].passes == 2
    re_test = fake_time_case([SimpleNamespace(attempt=1)], nodes[3], None, None)  # f's re-test pool alone
    assert not judge("f/pytorch/b1/t1", re_test.base_us, re_test.head_us, 3.0, 10).failed
    assert final["f/pytorch/b1/t1"].failed and final["f/pytorch/b1/t1"].passes == 2
    assert not final["g/pytorch/b1/t1"].failed and final["g/pytorch/b1/t1"].change_pct < 3
    assert final["c/pytorch/b1/t1"].passes == 1 and "c/pytorch/b1/t1" not in first
    assert [c for c, f in final.items() if f.failed] == ["u/openvino/b1/t1", "a/pytorch/b1/t1", "f/pytorch/b1/t1"]
    # Without re-tests, the first pass has the last word.
    outcomes = gate_all(GateConfig(profile_ms=0, retest_failures=False))
    assert FakeSessionPool.made == [(["base", "head"], 0)]
    assert [c for c, o in outcomes.items() if o.finding.failed] == ["a/pytorch/b1/t1", "f/pytorch/b1/t1",
                                                                    "g/pytorch/b1/t1"]


def test_abba_sets_up_as_many_pairs_base_first_as_head_first():
    from optcv.gate.workers import pair_orders

    sides = ["base", "head"]
    firsts = [pair[0] for pair in pair_orders(sides, 4, "abba", seed=0)]
    assert firsts == ["base", "head", "head", "base"]
    assert [p[0] for p in pair_orders(sides, 4, "base-first", seed=0)] == ["base"] * 4
    assert {p[0] for p in pair_orders(sides, 64, "random", seed=0)} == {"base", "head"}


# A test whose module, as each session collects it, writes the session's process id, hash seed and environment
# padding to a log.
SEED_REPORTING_TEST = """\
import os

with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}} {{os.environ.get('PYTHONHASHSEED')}} {{len(os.environ.get('OPTCV_GATE_PAD', ''))}}\\n")


def test_nothing(benchmark):
    benchmark(sum, ())
"""


@pytest.mark.parametrize("hash_seeds", ["per-pair", "fixed"])
def test_a_pairs_two_sessions_share_a_hash_seed_and_pairs_differ(tmp_path, hash_seeds):
    """The hash seed is sampled per pair like the memory layout: both sides of a pair alike, so identical code
    gets identical layouts, and other pairs (and another gate seed) other seeds, so a layout's luck is spread
    over the pairs the interval resamples instead of fixed for the whole gate."""
    from optcv.gate.sessions import SessionPool

    tree = tmp_path / "tree"
    tree.mkdir()
    log = tmp_path / "sessions.log"
    (tree / "test_seed.py").write_text(SEED_REPORTING_TEST.format(log=str(log)))
    sides = [Side("base", sys.executable, tree), Side("head", sys.executable, tree)]

    def seeds(seed):
        log.write_text("")
        config = GateConfig(workers_per_side=4, seed=seed, hash_seeds=hash_seeds, tree_per_pair=False)
        work = tmp_path / f"work-{seed}"
        work.mkdir()
        pool = SessionPool(sides, ["test_seed.py::test_nothing"], config, work)
        try:
            reported = {int(pid): (hash_seed, int(pad)) for pid, hash_seed, pad in map(str.split, log.read_text()
                                                                                       .splitlines())}
            return {pair: {(w.side.label, *reported[w.process.pid]) for w in pool.workers if w.pair == pair}
                    for pair in range(4)}
        finally:
            pool.close()

    first, other_gate = seeds(0), seeds(1)
    for pairs in (first, other_gate):
        assert all(len(pair) == 2 and len({(seed, pad) for _, seed, pad in pair}) == 1 for pair in pairs.values())
    by_pair = [next(iter(pair))[1] for pair in first.values()]
    if hash_seeds == "fixed":
        assert set(by_pair) == {"0"}
    else:
        assert len(set(by_pair)) == 4 and "0" not in by_pair
        assert by_pair != [next(iter(pair))[1] for pair in other_gate.values()]
