"""The A/B gate on a user's declared models: the sides are revisions of their repository, each side's model is
built from its own revision, and optcv itself is the same on both sides. Nothing here judges a speed: the
gate's power on declared models is measured in benchmarks/ (alone on the machine)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import onnx
import pytest

from optcv.cli import main
from optcv.declared.config import load_declarations
from optcv.errors import OptcvError
from optcv.gate.config import GateConfig, case_specs, recipes_for
from optcv.gate.run import SameCode, _same_code, run_gate
from optcv.gate.sides import HEAD_TREE, sides_for
from optcv.gate.worker.protocol import DeclaredRecipe
from optcv.gate.workers import build_all_artifacts
from optcv.report.gate import outcome_markdown
from optcv.runtime import BACKENDS
from tests.user_repo import NETS, TINY, write_user_repo

SLOWER_FORWARD = NETS.replace("return self.head(self.conv(x).relu().mean((2, 3)))",
                              "return self.head(self.conv(x).relu().exp().log().mean((2, 3)))")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _committed_repo(root, declarations=TINY, folder="."):
    """A git repository whose `folder` holds the user's project, committed once."""
    path = write_user_repo(root / folder, declarations)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    return path


def _config(**changes):
    return dataclasses.replace(GateConfig(models=("tiny",), declarations="pyproject.toml"), **changes)


def test_a_declared_models_cases_are_what_its_declaration_lists(tmp_path):
    declared = load_declarations(write_user_repo(tmp_path), known_backends=tuple(BACKENDS))
    ids = [s.id for s in case_specs(_config(), declared)]
    assert ids == ["tiny/pytorch/b1/t1", "tiny/pytorch/b4/t1", "tiny/onnxruntime/b1/t1", "tiny/onnxruntime/b4/t1"]
    assert [s.id for s in case_specs(_config(cases=("*/onnxruntime/b4/*",)), declared)] == [
        "tiny/onnxruntime/b4/t1"]
    assert [s.id for s in case_specs(_config(backends=("pytorch",)), declared)] == [
        "tiny/pytorch/b1/t1", "tiny/pytorch/b4/t1"]
    with pytest.raises(OptcvError, match="unknown gate model nope: choose from .*tiny"):
        case_specs(_config(models=("nope",)), declared)
    assert recipes_for(case_specs(_config(), declared), "pyproject.toml") == {
        "tiny": DeclaredRecipe("tiny", "pyproject.toml", ("onnxruntime", "pytorch"))}


def test_a_user_repositorys_sides_are_its_revisions_measured_by_this_optcv(tmp_path):
    _committed_repo(tmp_path, folder="app")
    with sides_for("HEAD", None, tmp_path / "app", None, user_repository=True) as sides:
        assert not isinstance(sides, str)
        base, head = sides
        assert base.tree.name == "app" and (base.tree / "usernets" / "nets.py").is_file()
        assert base.tree.resolve() != head.tree.resolve() == (tmp_path / "app").resolve()
        assert base.harness == head.harness == HEAD_TREE and base.optcv_root == HEAD_TREE
        # The revision's own packages first, then the optcv that measures, then the user's own path.
        path = base.env()["PYTHONPATH"].split(os.pathsep)
        assert path[:2] == [str(base.tree), str(HEAD_TREE)]


def test_each_side_builds_the_model_of_its_own_revision(tmp_path):
    path = _committed_repo(tmp_path / "repo")
    (path.parent / "usernets" / "nets.py").write_text(SLOWER_FORWARD)  # the head: an uncommitted edit
    declared = load_declarations(path, known_backends=tuple(BACKENDS))
    specs = case_specs(_config(backends=("onnxruntime",)), declared)
    work = tmp_path / "work"
    work.mkdir()
    with sides_for("HEAD", None, path.parent, None, user_repository=True) as sides:
        assert not isinstance(sides, str)
        built = build_all_artifacts(sides, work, recipes_for(specs, "pyproject.toml"), None, tmp_path / "cache")
    ops = {label: [n.op_type for n in onnx.load(built[label].models["tiny"].onnx).graph.node]
           for label in ("base", "head")}
    assert "Exp" in ops["head"] and "Exp" not in ops["base"], ops


def test_a_src_layout_is_imported_from_each_sides_own_src(tmp_path):
    """paths = ["src"]: the package lives in src/ (and would be installed editable), each side imports its own."""
    root = tmp_path / "repo"
    path = write_user_repo(root, TINY.replace("usernets.nets:build", "srcnets.nets:build") + 'paths = ["src"]\n')
    (root / "src").mkdir()
    (root / "usernets").rename(root / "src" / "srcnets")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    (root / "src" / "srcnets" / "nets.py").write_text(SLOWER_FORWARD)
    declared = load_declarations(path, known_backends=tuple(BACKENDS))
    assert declared["tiny"].import_folders == ((root / "src").resolve(), root.resolve())
    specs = case_specs(_config(backends=("onnxruntime",)), declared)
    work = tmp_path / "work"
    work.mkdir()
    with sides_for("HEAD", None, root, None, user_repository=True) as sides:
        assert not isinstance(sides, str)
        built = build_all_artifacts(sides, work, recipes_for(specs, "pyproject.toml"), None, tmp_path / "cache")
    ops = {label: [n.op_type for n in onnx.load(built[label].models["tiny"].onnx).graph.node]
           for label in ("base", "head")}
    assert "Exp" in ops["head"] and "Exp" not in ops["base"], ops


def test_a_factory_from_outside_the_sides_tree_is_refused_naming_where_it_came_from(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_user_repo(elsewhere)
    path = _committed_repo(tmp_path / "repo", TINY.replace("usernets.nets:build", "othernets.nets:build"))
    (elsewhere / "usernets").rename(elsewhere / "othernets")
    declared = load_declarations(path, known_backends=tuple(BACKENDS))
    specs = case_specs(_config(backends=("onnxruntime",)), declared)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(elsewhere), os.environ.get("PYTHONPATH", "")])}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "environ", env)
        with sides_for("HEAD", None, path.parent, None, user_repository=True) as sides:
            assert not isinstance(sides, str)
            with pytest.raises(Exception, match="othernets.nets was imported from .*elsewhere.* outside this side"):
                build_all_artifacts(sides, work, recipes_for(specs, "pyproject.toml"), None, tmp_path / "cache")


def test_a_commit_that_changes_no_model_input_is_not_timed(tmp_path):
    path = _committed_repo(tmp_path)
    (tmp_path / "README.md").write_text("# their app\n")
    same = run_gate(_config(), against="HEAD", head_tree=path.parent, repo=tmp_path)
    assert isinstance(same, SameCode) and same.user_models
    with pytest.raises(OptcvError, match="no gate case matches nosuch"):  # checked before "nothing to time"
        run_gate(dataclasses.replace(_config(), cases=("nosuch/*",)), against="HEAD", head_tree=path.parent,
               repo=tmp_path)
    assert "the same files their declared models are made of" in outcome_markdown(same)
    (path.parent / "usernets" / "nets.py").write_text(NETS + "# a comment\n")
    with sides_for("HEAD", None, path.parent, None, user_repository=True) as sides:
        assert not isinstance(sides, str)
        assert _same_code(*sides) is None  # the code changed, so it is timed (and must pass)


def test_cli_gate_refuses_in_one_line_what_it_cannot_gate(tmp_path, monkeypatch, capsys):
    path = _committed_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["gate", "--models", "tiny"]) == 2  # one commit: no parent to time against
    assert "no base to time against" in capsys.readouterr().err
    assert main(["gate", "--models", "tiny", "tutorial"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["gate", "--models", "nope", "--declarations", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown gate model nope: choose from" in err and "tiny" in err and len(err.strip().splitlines()) == 1
    monkeypatch.chdir(tmp_path.parent)
    assert main(["gate", "--models", "vgg"]) == 2
    assert "declare your own" in capsys.readouterr().err


def test_a_declared_models_gate_times_both_revisions_end_to_end(tmp_path):
    """`optcv gate --models tiny`: the plugin's latency case of each selected case, timed in both revisions'
    sessions (the engine of every pytest-benchmark test)."""
    path = _committed_repo(tmp_path)
    (path.parent / "usernets" / "nets.py").write_text(SLOWER_FORWARD)
    config = _config(backends=("onnxruntime",), cases=("*/b1/*",), min_rounds=5, case_seconds=0.2,
                     max_case_seconds=0.2, workers_per_side=1, retest_failures=False, profile_ms=0)
    result = run_gate(config, against="HEAD", head_tree=path.parent, repo=tmp_path)
    assert not isinstance(result, SameCode)
    assert [f.case for f in result.findings] == ["tiny/onnxruntime/b1/t1"] and not result.not_compared
    assert result.base["harness"] == result.head["harness"] == str(HEAD_TREE)
    assert result.base["code_hash"] != result.head["code_hash"]
    assert sys.executable == result.base["python"]


def _pytest(repo, *args, cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env |= {"PYTHONPATH": os.pathsep.join([str(HEAD_TREE), os.environ.get("PYTHONPATH", "")]),
            "OPTCV_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", *args],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)


def test_pytest_gates_the_plugins_cases_each_side_building_its_own_revisions_model(tmp_path):
    """`pytest --optcv --gate-against HEAD`: each side's sessions build the model their tree declares (the base's
    without the head's edit: two exports in the cache, one with its Exp), a model only the head declares is new,
    and the cases' node ids are the plugin's."""
    path = _committed_repo(tmp_path / "repo")
    (path.parent / "usernets" / "nets.py").write_text(SLOWER_FORWARD)
    path.write_text(path.read_text() + TINY.replace("models.tiny]", "models.also]"))
    cache = tmp_path / "cache"
    # A threshold no timing noise reaches: this test is about what each side runs, not speed (that is benchmarks/).
    done = _pytest(path.parent, "--optcv", "--gate-against", "HEAD", "--gate-threshold", "50", "--gate-json",
                   "gate.json", "-k", "latency and onnxruntime and b1", cache=cache)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    tests = {t["node"]: t for t in json.loads((path.parent / "gate.json").read_text())["tests"]}
    assert tests["optcv::test_optcv_latency[tiny/onnxruntime/b1/t1]"]["gated"], tests
    assert tests["optcv::test_optcv_latency[also/onnxruntime/b1/t1]"]["unpaired"] == "new_in_head", tests
    exported = {tuple(sorted(n.op_type for n in onnx.load(f).graph.node))
                for f in cache.glob("**/tiny-*/model.onnx")}
    assert len(exported) == 2 and sum("Exp" in ops for ops in exported) == 1, exported


def test_a_gate_sides_factory_from_outside_its_tree_fails_the_case_naming_where_it_came_from(tmp_path):
    """As one side of a gate (the sessions' --optcv-gate-side), a case whose factory is imported from outside the
    side's tree fails: its base would time the head's code."""
    elsewhere = tmp_path / "elsewhere"
    write_user_repo(elsewhere)
    (elsewhere / "usernets").rename(elsewhere / "othernets")
    path = write_user_repo(tmp_path / "repo", TINY.replace("usernets.nets:build", "othernets.nets:build"))
    env_path = os.pathsep.join([str(elsewhere), os.environ.get("PYTHONPATH", "")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", env_path)
        done = _pytest(path.parent, "--optcv", "--optcv-gate-side", "-k", "latency and onnxruntime and b1",
                       "--benchmark-disable", cache=tmp_path / "cache")
        alone = _pytest(path.parent, "--optcv", "-k", "latency and onnxruntime and b1", "--benchmark-disable",
                        cache=tmp_path / "cache")
    assert done.returncode == 1 and "othernets.nets was imported from" in done.stdout, done.stdout[-3000:]
    assert "outside this side's tree" in done.stdout
    assert alone.returncode == 0, alone.stdout[-3000:]  # outside a gate, an installed or editable factory is fine


def test_a_declared_model_named_like_a_reference_model_is_the_users(tmp_path, monkeypatch):
    """The tutorial's repository declares its own `resnet18`: the gate gates that one (its two backends), not
    optcv's reference ResNet-18 (which would ask for OpenVINO too)."""
    from optcv.cli.common import user_repository

    (tmp_path / "mynets").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.optcv.models.resnet18]\nfactory = "mynets.vision:build"\n'
                                             'input = { shape = [3, 64, 64] }\nbackends = ["pytorch", "onnxruntime"]\n')
    _git(tmp_path, "init", "-q")
    monkeypatch.chdir(tmp_path)
    repo, declarations = user_repository(["resnet18"], None)
    assert repo.resolve() == tmp_path.resolve() and declarations == "pyproject.toml"
    declared = load_declarations(tmp_path / declarations, known_backends=tuple(BACKENDS))
    specs = case_specs(GateConfig(models=("resnet18",), declarations=declarations), declared)
    assert {(s.backend, s.declared) for s in specs} == {("pytorch", True), ("onnxruntime", True)}
    assert user_repository(["tutorial"], None) is None  # a reference model the user did not declare stays optcv's
