"""The gate's self-test on numbers made here and in small processes: injections from outside the timed code, the
plan, how each arm is judged and reported, and a record that resumes."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from optcv.errors import (
    OptcvError,
)
from optcv.gate.attribution import OUTSIDE, attribution, named_changes
from optcv.gate.config import GateConfig
from optcv.gate.inject import write_injection
from optcv.gate.verdict import (
    CaseFinding,
    PairedChange,
    Verdict,
    verdict_of,
)
from optcv.gate.worker.protocol import Built
from tests.gate_helpers import finding_of, profiles_of


def test_injection_wraps_each_target_from_outside_a_fraction_of_zero_included(tmp_path):
    probe = ("import torch; from onnxruntime.capi import onnxruntime_inference_collection as c; "
             "print(hasattr(c.InferenceSession.run, '__wrapped__'), hasattr(torch.nn.Module.__call__, '__wrapped__'))")

    def wrapped(folder):
        env = {**os.environ, "PYTHONPATH": str(folder)}
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                              check=True).stdout.split()

    assert wrapped(write_injection(tmp_path / "ort", {"onnxruntime": 0.05})) == ["True", "False"]
    assert wrapped(write_injection(tmp_path / "both", {"onnxruntime": 0.0, "pytorch": 0.015})) == ["True", "True"]
    assert wrapped(write_injection(tmp_path / "none", {})) == ["False", "False"]
    with pytest.raises(ValueError, match="unknown injection target"):
        write_injection(tmp_path, {"nothing": 0.05})


def test_an_injected_fraction_is_of_the_whole_timed_call_wherever_the_target_lies_in_it(tmp_path):
    """A target that takes a quarter of optcv's predict call, called twice in it, slowed by 20 %: from the second
    call on, the call takes 20 % longer, not 20 % of the target's share; `shared` slows the call itself. On a
    clock that only the functions here move (10 ns per reading)."""
    text = (write_injection(tmp_path, {"onnxruntime": 0.2}) / "sitecustomize.py").read_text()
    namespace: dict = {}
    exec(compile(text.rsplit("\n_inject(", 1)[0], "sitecustomize", "exec"), namespace)
    now = [0]

    def clock():
        now[0] += 10
        return now[0]

    namespace["_clock"] = clock

    def spend(us):
        now[0] += us * 1_000

    def call_takes(unit):
        started = now[0]
        unit()
        return (now[0] - started) / 1e6  # ms

    target = namespace["_slowed"](lambda: spend(125), 0.2)
    unit = namespace["_timed_unit"](lambda: (spend(750), target(), target()), 0.0)
    assert call_takes(unit) == pytest.approx(1.05, abs=0.01)  # no call before: 20 % of the target's own time
    assert [call_takes(unit) for _ in range(3)] == pytest.approx([1.2] * 3, abs=0.01)
    shared = namespace["_timed_unit"](lambda: spend(1000), 0.05)
    assert call_takes(shared) == pytest.approx(1.05, abs=0.01)


def test_the_openvino_and_shared_targets_reach_openvino_and_every_predictor(tmp_path):
    probe = ("from openvino import _ov_api; from optcv.backends import onnxruntime, openvino, pytorch, torch_compile\n"
             "print(hasattr(_ov_api.InferRequest.infer, '__wrapped__'), *(hasattr(p.predict, '__wrapped__') for p in ("
             "onnxruntime.OrtPredictor, openvino.OpenVinoPredictor, pytorch.TorchPredictor, "
             "torch_compile.CompiledTorchPredictor)))")

    def wrapped(folder):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(Path(__file__).parents[1])])}
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                              check=True).stdout.split()

    # Every predictor's predict is wrapped whenever anything is: the timed call sizes every target's wait.
    assert wrapped(write_injection(tmp_path / "ov", {"openvino": 0.05})) == ["True"] * 5
    assert wrapped(write_injection(tmp_path / "shared", {"shared": 0.0})) == ["False"] + ["True"] * 4
    assert wrapped(write_injection(tmp_path / "none", {})) == ["False"] * 5


def test_the_self_test_plan_gives_each_target_each_level_and_shares_runs_only_between_disjoint_targets():
    from optcv.gate.inject import TOUCHES
    from optcv.gate.selftest import default_plan, disjoint_groups

    targets = ["pytorch", "onnxruntime", "openvino", "pytorch-op", "shared"]
    assert disjoint_groups(targets) == [["pytorch", "onnxruntime", "openvino"], ["pytorch-op"], ["shared"]]
    plan = default_plan(targets, (1.5, 5.0), repeats=10, unchanged_repeats=20)
    assert len(plan) == 20 + 3 * 2 * 10 and sum(not run for run in plan) == 20
    for target in targets:
        levels = [run[target] for run in plan if target in run]
        assert sorted(levels) == [1.5] * 10 + [5.0] * 10, target
    for run in plan:
        assert all(not TOUCHES[a] & TOUCHES[b] for a in run for b in run if a < b), run
        assert len(set(run.values())) == min(len(run), 2), run  # a shared run: a catch and a pass


def test_an_extra_operator_injection_spends_its_time_in_an_operator_the_profiler_sees(tmp_path):
    probe = ("import torch; from torch.profiler import profile; m = torch.nn.Linear(8, 8); x = torch.randn(4, 8)\n"
             "with profile() as p:\n    [m(x) for _ in range(5)]\n"
             "print(sum(e.count for e in p.key_averages() if e.key == 'aten::exp'))")

    def exp_calls(fraction):
        env = {**os.environ, "PYTHONPATH": str(write_injection(tmp_path / str(fraction), {"pytorch-op": fraction}))}
        return int(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                  check=True).stdout.split()[-1])

    assert exp_calls(0.0) == 0 and exp_calls(1.0) >= 5


def test_self_test_judges_each_threshold_as_a_gate_with_retests_would():
    from optcv.gate.selftest import SelfTestRun

    first = {"x": CaseFinding("x", 100, 104, 4.0, 2.5, 5.5, 2.0, Verdict.REGRESSION, 30, 10)}
    retest = CaseFinding("x", 100, 102.5, 2.5, 1.0, 4.0, 2.0, Verdict.REGRESSION, 30, 10)
    run = SelfTestRun({"pytorch": 3.0}, 0, [retest], 1.0, first)
    assert run.verdict(retest, 2.0) is Verdict.REGRESSION  # both passes above 2 %
    assert run.verdict(retest, 3.0) is Verdict.SLOWER_WITHIN_THRESHOLD  # first pass flagged at 3, re-test did not
    assert run.verdict(retest, 5.0) is Verdict.SLOWER_WITHIN_THRESHOLD  # first pass alone stays under 5
    plain = SelfTestRun({}, 0, [first["x"]], 1.0)
    assert plain.verdict(first["x"], 3.0) is Verdict.REGRESSION
    undecided = {"y": CaseFinding("y", 100, 106, 6.0, -1.0, 13.0, 2.0, Verdict.NO_CHANGE, 30, 10)}
    pooled = CaseFinding("y", 100, 104, 4.0, 1.0, 7.0, 2.0, Verdict.REGRESSION, 30, 10, passes=2)
    both = SelfTestRun({"openvino": 5.0}, 0, [pooled], 1.0, undecided)
    assert both.verdict(pooled, 2.0) is Verdict.REGRESSION  # undecided at 2: both passes decide
    assert both.verdict(pooled, 3.0) is Verdict.REGRESSION  # undecided at 3 too (+6 %), and both passes read +4 %
    assert both.verdict(pooled, 5.0) is Verdict.SLOWER_WITHIN_THRESHOLD  # both passes under 5 %
    assert both.verdict(pooled, 8.0) is Verdict.NO_CHANGE  # not undecided at 8: the first pass alone decides


def test_self_test_reports_each_arm_with_its_nominal_and_measured_change_and_what_it_should_do():
    from optcv.gate.selftest import SelfTestResult, SelfTestRun
    from optcv.report.gate import self_test_markdown, self_test_rows

    def run(injected, ort, torch):
        return SelfTestRun(injected, 0, [finding_of("m/onnxruntime/b1/t1", ort, verdict_of(_change(ort), 3.0)),
                                         finding_of("m/pytorch/b1/t1", torch, verdict_of(_change(torch), 3.0))], 1.0)

    both = {"onnxruntime": 5.0, "pytorch": 1.5}
    result = SelfTestResult([run(both, 5.8, 1.2), run(both, 2.9, 2.0), run({}, 0.3, -0.2), run({}, 3.6, 0.1)],
                            (3.0,), {"wrapped_on_both_sides": ["onnxruntime", "pytorch"]}, {"cpu": "c", "cpu_count": 2})
    caught = result.arm(both, "m/onnxruntime/b1/t1", 3.0)
    below = result.arm(both, "m/pytorch/b1/t1", 3.0)
    assert (caught.nominal_pct, caught.failed, caught.runs, caught.measured_pct) == (5.0, 1, 2, (5.8, 2.9))
    assert (below.nominal_pct, below.failed, below.runs) == (1.5, 0, 2)
    assert result.false_alarms(3.0) == (1, 2, 1, 4)
    rows = [list(row.values()) for row in self_test_rows(result, 3.0)]
    assert rows == [["onnxruntime +5 %, pytorch +1.5 %", "m/onnxruntime/b1/t1", "+5 %", "+4.3 % (+2.9 … +5.8)", "fail",
                     "failed 1/2"],
                    ["onnxruntime +5 %, pytorch +1.5 %", "m/pytorch/b1/t1", "+1.5 %", "+1.6 % (+1.2 … +2.0)", "pass",
                     "passed 2/2"]]
    assert "1 of 2 gate runs on unchanged code failed" in self_test_markdown(result)


def _change(pct):
    return PairedChange(pct, pct - 1.0, pct + 1.0, 30)


def test_self_test_checks_that_each_slowdown_is_named_where_it_was_put():
    from optcv.gate.selftest import SelfTestResult, SelfTestRun
    from optcv.report.gate import self_test_markdown

    def failing(case, profile):
        return dataclasses.replace(finding_of(case, 8.0, Verdict.REGRESSION), profile=profile)

    base = profiles_of(8, seed=1)
    extra_op = attribution(base, profiles_of(8, seed=2, extra_op=10.0, extra_name="aten::exp"), calls=50)
    waited = attribution(base, profiles_of(8, seed=3, outside_wait=15.0), calls=50)
    runs = [SelfTestRun({"pytorch-op": 5.0}, 0, [failing("m/pytorch/b1/t1", extra_op)], 1.0),
            SelfTestRun({"pytorch-op": 5.0}, 1, [failing("m/pytorch/b1/t1", waited)], 1.0),  # wrongly placed
            SelfTestRun({"onnxruntime": 5.0}, 2, [failing("m/onnxruntime/b1/t1", waited),
                                                  failing("m/onnxruntime-int8/b1/t1", waited)], 1.0)]
    result = SelfTestResult(runs, (3.0,), {}, {"cpu": "c", "cpu_count": 2})
    assert result.attribution() == {"pytorch-op": (1, 2), "onnxruntime": (2, 2)}
    assert "1/2 failing cases" in self_test_markdown(result) and "aten::exp" in self_test_markdown(result)


def test_an_interrupted_self_test_goes_on_from_its_record_and_refuses_another_plans(tmp_path, monkeypatch):
    from optcv.gate import selftest

    measured = []

    def fake_measure(base, head, config, thresholds, **_kwargs):
        if len(measured) == 1 and not (tmp_path / "interrupted").exists():
            (tmp_path / "interrupted").touch()
            raise KeyboardInterrupt
        measured.append(config.seed)
        finding = finding_of("tutorial/pytorch/b1/t1", 0.5, Verdict.NO_CHANGE)
        return SimpleNamespace(findings=[finding], retested=[], seconds=1.0, regressions=[], measured=[], failures=[])

    monkeypatch.setattr(selftest, "measure", fake_measure)
    monkeypatch.setattr(selftest, "prepare_inputs", lambda workdir, data_dir: ({}, "data"))
    monkeypatch.setattr(selftest, "build_artifacts", lambda *a, **k: Built({}, "h", {}, ""))
    config = GateConfig(models=("tutorial",), cases=("tutorial/pytorch/b1/t1",))
    plan, record = [{}, {"pytorch": 5.0}, {}], tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        selftest.run_self_test(config, plan, record=record)
    assert measured == [0] and len(json.loads(record.read_text())["runs"]) == 1  # the finished run is kept
    result = selftest.run_self_test(config, plan, record=record)
    assert measured == [0, 1, 2] and [r.seed for r in result.runs] == [0, 1, 2]
    assert result.runs[0].findings[0].verdict is Verdict.NO_CHANGE  # read back, typed
    with pytest.raises(OptcvError, match="other settings or another plan"):
        selftest.run_self_test(config, [{"pytorch": 1.5}, {}, {}], record=record)


def test_attribution_divides_out_the_machines_pace_that_moves_every_row_of_a_profile():
    """The head's profiles ran while the machine was slower (every row 10-40 % slower, as a neighbour on a
    shared VM does): a 15 µs wait outside operators is still what is named, at its size, and unchanged code names
    nothing. On the raw differences the wait read +21 µs and the other operators were named beside it."""
    from optcv.gate.attribution import head_paces

    rng = np.random.default_rng(7)

    def paced(profiles, low, high):
        paces = rng.uniform(low, high, len(profiles))
        return [{k: v * f for k, v in p.items()} for p, f in zip(profiles, paces, strict=True)]

    base = paced(profiles_of(8, seed=1), 1.0, 1.05)
    waited = named_changes(attribution(base, paced(profiles_of(8, seed=3, outside_wait=15.0), 1.1, 1.4), calls=50))
    assert waited and waited[0].operator == OUTSIDE and 13 < waited[0].change_us < 18
    assert named_changes(attribution(base, paced(profiles_of(8, seed=4), 1.1, 1.4), calls=50)) == []
    assert all(1.0 < p < 1.45 for p in head_paces(base, paced(profiles_of(8, seed=5), 1.1, 1.4)))


def test_the_self_test_counts_how_often_each_unchanged_cases_interval_held_zero():
    """The unchanged arm's coverage, per case: every run that injected nothing into the case (the unchanged runs,
    and the cases another run's injection did not reach), with the misses on each side."""
    from optcv.gate.selftest import SelfTestResult, SelfTestRun
    from optcv.report.gate import self_test_markdown

    def found(case, change, low, high):
        return CaseFinding(case, 100.0, 100.0 + change, change, low, high, 3.0, Verdict.NO_CHANGE, 30, 10)

    runs = [SelfTestRun({}, 0, [found("m/onnxruntime/b1/t1", 0.2, -0.5, 0.9),
                                found("m/pytorch/b1/t1", -1.0, -1.6, -0.3)], 1.0),
            SelfTestRun({}, 1, [found("m/onnxruntime/b1/t1", 0.9, 0.1, 1.7), found("m/pytorch/b1/t1", 0.1, -0.6, 0.8)],
                        1.0),
            SelfTestRun({"pytorch": 5.0}, 2, [found("m/onnxruntime/b1/t1", -0.1, -0.8, 0.6),
                                              found("m/pytorch/b1/t1", 5.1, 4.0, 6.2)], 1.0)]
    result = SelfTestResult(runs, (3.0,), {}, {"cpu": "c", "cpu_count": 2})
    coverage = {c.case: c for c in result.coverage()}
    ort, torch = coverage["m/onnxruntime/b1/t1"], coverage["m/pytorch/b1/t1"]
    assert (ort.runs, ort.contain, ort.below, ort.above) == (3, 2, 0, 1) and ort.median_change_pct == 0.2
    assert (torch.runs, torch.contain, torch.below, torch.above) == (2, 1, 1, 0)  # the injected run is not counted
    assert re.search(r"\| m/onnxruntime/b1/t1 +\| +3 \| 2/3 +\| +0 \| +1 \| \+0\.2 %", self_test_markdown(result))
