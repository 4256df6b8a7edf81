"""What the gate compares: the suite's tests as its cases, the thresholds that name them, the recipes the harness
builds, a change that needs timing, and the gate's public face and typed messages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optcv.errors import (
    OptcvError,
)
from optcv.gate.config import GateConfig
from optcv.gate.sides import Side
from optcv.gate.verdict import (
    DEFAULT_THRESHOLD_PCT,
    Thresholds,
)
from optcv.gate.worker.protocol import Built, ReferenceModel, Setup
from tests.gate_helpers import spec_of


@pytest.fixture(scope="module")
def suite() -> dict[str, str]:
    """The gate's cases: the suite's gated tests (benchmarks/test_latency.py), collected from this tree."""
    from optcv.gate.sides import HEAD_TREE
    from optcv.gate.suite import suite_cases

    return suite_cases(Side("head", sys.executable, HEAD_TREE))


def test_every_backend_and_model_is_gated_and_the_pull_request_set_is_a_subset(suite):
    """The gate's cases are the suite's tests, named by their parameter; its default set is a selection of them."""
    from optcv.gate.suite import select_cases

    every = list(select_cases(suite, GateConfig(cases=("all",))))
    assert all(node == f"benchmarks/test_latency.py::test_{'training_step' if '/train/' in case else 'latency'}"
                       f"[{case}]" for case, node in suite.items())
    for model in ("tutorial", "tunable", "resnet18", "mobilenet_v3_small"):
        for backend in ("pytorch", "onnxruntime", "onnxruntime-int8", "openvino"):
            assert f"{model}/{backend}/b1/t1" in every and f"{model}/{backend}/b64/t1" in every
        assert f"{model}/torch-compile/b1/t1" in every and f"{model}/train/b64/t1" in every
    assert "tutorial/onnxruntime/b256/t1" in every and "resnet18/onnxruntime/b256/t1" not in every
    assert len(every) == len(set(every))
    default = list(select_cases(suite, GateConfig()))
    assert set(default) < set(every) and len(default) == 4 * 4 + 2
    assert not [case for case in default if "torch-compile" in case]  # its compiles cost minutes: nightly
    assert list(select_cases(suite, GateConfig(models=("tutorial",), cases=("tutorial/*/b1/t1",)))) == [
        "tutorial/pytorch/b1/t1", "tutorial/onnxruntime/b1/t1", "tutorial/onnxruntime-int8/b1/t1",
        "tutorial/openvino/b1/t1", "tutorial/torch-compile/b1/t1"]
    chosen = select_cases(suite, GateConfig(models=("resnet18",), backends=("openvino",), cases=("all",)))
    assert list(chosen) == ["resnet18/openvino/b1/t1", "resnet18/openvino/b64/t1"]
    with pytest.raises(OptcvError, match="no gate case matches"):
        select_cases(suite, GateConfig(cases=("nothing/*",)))
    with pytest.raises(OptcvError, match="unknown gate backend tensorrt"):
        GateConfig(backends=("tensorrt",))


def test_build_recipes_ask_for_an_int8_twin_only_where_an_int8_case_needs_it():
    from optcv.gate.config import recipes_for

    recipes = recipes_for([spec_of("tutorial/onnxruntime-int8/b1/t1"), spec_of("tutorial/onnxruntime-int8/b1/t2"),
                           spec_of("resnet18/pytorch/b1/t1")])
    assert list(recipes) == ["tutorial", "resnet18"]
    assert recipes["tutorial"].int8["calibration_images"] > 0 and recipes["resnet18"].int8 is None
    assert recipes["resnet18"].train_images < recipes["tutorial"].train_images  # compute-heavy: fewer


def test_the_committed_per_case_thresholds_each_name_a_case_and_give_their_measured_resolution(suite):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gate_thresholds.json"
    thresholds = Thresholds.load(path)
    every = list(suite)
    measured = json.loads(path.read_text())["why"]["half_width_pct"]
    for pattern, pct in thresholds.per_case:
        assert [case for case in every if case == pattern], f"{pattern} names no gate case"
        assert pct >= max(measured[pattern]) >= DEFAULT_THRESHOLD_PCT  # no finer than the gate resolved there


WIDEST_GATED_THRESHOLD_PCT = 20.0


def test_no_case_is_gated_in_name_only(suite):
    """Every case the gate can time has a threshold it can resolve in optcv's own thresholds file, and the tests
    that cannot resolve one are marked not gated (tutorial/pytorch/b1/t2 at ~40 % half-width), with the reason."""
    from benchmarks.test_latency import NOT_GATED, not_gated
    from optcv.measure.case import CaseId

    root = Path(__file__).resolve().parents[1]
    thresholds = Thresholds.load(root / "benchmarks" / "gate_thresholds.json")
    cases = set(suite)
    assert not cases & set(NOT_GATED) and "tutorial/onnxruntime/b1/t2" in cases
    assert all(not_gated(CaseId.parse(case)) is None for case in cases)
    assert not_gated(CaseId.parse("tutorial/pytorch/b1/t2")) and not_gated(CaseId.parse("tutorial/openvino/b64/t2"))
    widest = max(cases, key=thresholds.for_case)
    assert thresholds.for_case(widest) <= WIDEST_GATED_THRESHOLD_PCT, widest


@pytest.mark.parametrize(("edited", "timed"), [("optcv/gate/timing.py", False), ("optcv/report/gate.py", False),
                                              ("optcv/backends/onnxruntime.py", True),
                                              ("optcv/training/models.py", True), ("optcv/torch_settings.py", True)])
def test_only_a_change_to_the_code_the_cases_run_is_timed(tmp_path, edited, timed):
    """Both sides run the head's harness, so a commit that changes only the gate (or the report) would time
    identical code: nothing to time. One that changes a backend, a model or what they import is timed."""
    import shutil

    from optcv.gate.run import SameCode, _same_code
    from optcv.gate.sides import HEAD_TREE

    trees = [tmp_path / "base", tmp_path / "head"]
    for tree in trees:
        shutil.copytree(HEAD_TREE / "optcv", tree / "optcv", ignore=shutil.ignore_patterns("__pycache__"))
    with open(trees[1] / edited, "a") as f:
        f.write("\n# a change\n")
    same = _same_code(Side("base", sys.executable, trees[0]), Side("head", sys.executable, trees[1]))
    assert (same is None) is timed
    assert isinstance(_same_code(Side("base", sys.executable, trees[0]), Side("head", sys.executable, trees[0])),
                      SameCode)


def test_the_gates_public_face_names_what_it_exports_and_loads_it_on_first_use():
    """`from optcv.gate import run_gate, GateConfig, ...` works for every name of `__all__`; importing a submodule
    alone (the pytest plugin's config import, in every pytest session) does not import the gate's entry point."""
    import optcv.gate as gate

    assert sorted(gate.__all__) == sorted(gate._PUBLIC)
    for name in set(gate.__all__) - {"GateOutcome"}:  # a union of the result types, which has no name
        assert getattr(gate, name).__name__ == name
    assert gate.GateResult in gate.GateOutcome.__args__
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        gate.nothing_here  # noqa: B018
    script = "import sys, optcv.gate.config; print('optcv.gate.run' in sys.modules, 'optcv.gate.timing' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_the_workers_messages_are_typed_on_both_sides_of_the_pipe():
    """A message decodes to the type it was sent as (lists back to tuples, so it stays frozen); a line of no known
    type, a missing field or an unknown one is refused at the boundary, naming it."""
    from optcv.gate.worker.protocol import Failed, Time, Timed, decode, encode

    setup = Setup({"images": "/x.npy"}, Built({"tutorial": ReferenceModel("/m.pt", "/m.onnx")}, "h", {}, "/o.py"),
                  (spec_of("tutorial/pytorch/b1/t1"),))
    assert decode(encode(setup)) == setup and decode(encode(Timed((1, 2)))) == Timed((1, 2))
    assert decode(encode(Failed("OSError: gone"))) == Failed("OSError: gone")
    with pytest.raises(ValueError, match="not a gate message"):
        decode('{"op": "time", "case": "x", "calls": 3}')
    with pytest.raises(ValueError, match="a Time message.*calls"):
        decode('{"type": "Time", "case": "x"}')
    with pytest.raises(ValueError, match=r"unknown fields \['extra'\]"):
        decode(encode(Time("x", 3))[:-1] + ', "extra": 1}')
