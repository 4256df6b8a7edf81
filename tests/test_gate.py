"""The A/B gate's statistics, rule, thresholds, cases, injection and reports, on numbers made here (no timing)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from optcv.cli import main
from optcv.env import fingerprint_differences, machine_fingerprint
from optcv.errors import BaselineInvalid, BaselineMissing, OptcvError, ParityFailure
from optcv.gate.config import GateConfig, case_specs
from optcv.gate.inject import write_injection
from optcv.gate.ratio import ratio_gate
from optcv.gate.sides import check_python
from optcv.gate.verdict import (
    CaseFinding,
    GateResult,
    GateSetupError,
    PairedChange,
    PerformanceRegression,
    Thresholds,
    Verdict,
    failure_kind,
    judge,
    paired_change,
    verdict_of,
)


def noisy_rounds(n=40, level=100.0, noise=0.01, seed=0):
    return level * np.exp(np.random.default_rng(seed).normal(0, noise, n))


def test_identical_sides_give_no_change():
    base = noisy_rounds()
    change = paired_change(base, base.copy())
    assert change.change_pct == 0 and change.ci_low_pct == 0 and change.ci_high_pct == 0 and change.rounds == 40


def test_a_five_percent_slower_head_is_estimated_near_five_percent():
    base = noisy_rounds(seed=1)
    head = base * 1.05 * np.exp(np.random.default_rng(2).normal(0, 0.01, base.size))
    change = paired_change(base, head)
    assert 4 < change.change_pct < 6 and change.ci_low_pct > 0 and change.ci_low_pct < change.change_pct


def test_pairing_cancels_a_machine_that_slows_down_midway():
    base = np.concatenate([np.full(20, 100.0), np.full(20, 150.0)])  # everything got 50 % slower midway
    change = paired_change(base, base * 1.03)
    assert change.change_pct == pytest.approx(3.0) and change.ci_low_pct == pytest.approx(3.0)


def test_a_difference_between_worker_pairs_widens_the_interval():
    base = np.vstack([noisy_rounds(seed=4), noisy_rounds(seed=5)])
    agree = base * np.array([[1.05], [1.05]])
    disagree = base * np.array([[1.10], [1.00]])  # one pair's processes run 10 % slower: not the code
    both, split = paired_change(base, agree), paired_change(base, disagree)
    assert both.ci_low_pct > 0 and 4 < both.change_pct < 6
    assert split.ci_low_pct < 0.5 and split.ci_high_pct > 9.5 and 4 < split.change_pct < 6


def test_paired_change_rejects_unpaired_or_empty_rounds():
    with pytest.raises(ValueError):
        paired_change([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_change([1.0], [1.0])


@pytest.mark.parametrize("change, low, high, expected", [
    (3.1, 0.5, 5.0, Verdict.REGRESSION),  # just above the threshold, significant
    (2.9, 0.5, 5.0, Verdict.SLOWER_WITHIN_THRESHOLD),  # just below it
    (4.0, -0.1, 8.0, Verdict.NO_CHANGE),  # above the threshold but not significant
    (0.0, -1.0, 1.0, Verdict.NO_CHANGE),
    (-5.0, -7.0, -3.0, Verdict.FASTER),  # faster is never a failure
])
def test_verdict_at_the_threshold_boundary(change, low, high, expected):
    assert verdict_of(PairedChange(change, low, high, 30), 3.0) is expected


def test_judge_fails_only_regressions_and_the_result_raises_a_typed_error():
    base = noisy_rounds(seed=3)
    slower = judge("m/onnxruntime/b1/t1", base, base * 1.06, 3.0, 10)
    same = judge("m/pytorch/b1/t1", base, base.copy(), 3.0, 10)
    assert slower.failed and not same.failed
    result = GateResult({}, {}, [slower, same], {}, {}, 1.0)
    with pytest.raises(PerformanceRegression) as raised:
        result.raise_for_regressions()
    assert raised.value.findings == [slower] and failure_kind(raised.value) == "SPEED REGRESSION"
    assert json.loads(json.dumps(result.to_dict()))["findings"][0]["verdict"] == "regression"


def test_failure_kinds_come_from_exception_types():
    assert failure_kind(ParityFailure("x")) == "PARITY FAILURE"
    assert failure_kind(BaselineMissing("x")) == "BASELINE MISSING"
    assert failure_kind(BaselineInvalid("x")) == "BASELINE INVALID"
    assert failure_kind(GateSetupError("x")) == "GATE SET-UP ERROR"
    assert failure_kind(AssertionError("SPEED REGRESSION in the text")) is None


def test_thresholds_per_case_patterns_and_override(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"schema": "optcv-gate-thresholds/1", "default": 4,
                                "cases": {"*/train/*": 6, "tutorial/*/b1/*": 2}}))
    thresholds = Thresholds.load(path)
    assert thresholds.for_case("tunable/train/b64/t1") == 6 and thresholds.for_case("tutorial/pytorch/b1/t2") == 2
    assert thresholds.for_case("tunable/pytorch/b64/t1") == 4
    assert Thresholds.load(path, 2.5).for_case("tunable/pytorch/b64/t1") == 2.5
    assert Thresholds.load(None).for_case("anything") == 3.0


@pytest.mark.parametrize("content", ["not json", json.dumps({"schema": "other"}),
                                     json.dumps({"schema": "optcv-gate-thresholds/1", "cases": {"*": -1}})])
def test_bad_thresholds_files_are_set_up_errors(tmp_path, content):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(GateSetupError):
        Thresholds.load(path)


def test_every_case_kind_is_gated_and_patterns_select():
    ids = [s["id"] for s in case_specs(GateConfig())]
    for model in ("tutorial", "tunable"):
        for backend in ("pytorch", "onnxruntime"):
            assert f"{model}/{backend}/b1/t1" in ids and f"{model}/{backend}/b64/t1" in ids
            assert f"{model}/{backend}/b256/t1" in ids
        assert f"{model}/train/b64/t1" in ids
    assert len(ids) == len(set(ids))
    assert [s["id"] for s in case_specs(GateConfig(cases=("tutorial/*/b1/t1",)))] == [
        "tutorial/pytorch/b1/t1", "tutorial/onnxruntime/b1/t1"]
    with pytest.raises(OptcvError, match="no gate case matches"):
        case_specs(GateConfig(cases=("nothing/*",)))


def test_injection_wraps_the_target_from_outside(tmp_path):
    folder = write_injection(tmp_path / "inject", "onnxruntime", 0.05)
    probe = ("from onnxruntime.capi import onnxruntime_inference_collection as c; "
             "print(hasattr(c.InferenceSession.run, '__wrapped__'))")
    env = {**os.environ, "PYTHONPATH": str(folder)}
    injected = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert (injected.stdout.strip(), plain.stdout.strip()) == ("True", "False")
    with pytest.raises(ValueError):
        write_injection(tmp_path, "nothing", 0.05)


def test_a_missing_base_interpreter_is_a_set_up_error(tmp_path):
    with pytest.raises(GateSetupError, match="base interpreter"):
        check_python(str(tmp_path / "no-python"))


def test_fingerprint_reports_another_machine_and_unknown_fields():
    now = machine_fingerprint()
    assert fingerprint_differences({"fingerprint": now}, now) == []
    other = {**now, "cpu": "Some Other CPU"}
    assert fingerprint_differences({"fingerprint": other}, now) == [f"cpu: Some Other CPU → {now['cpu']}"]
    assert any(d.startswith("isa: not recorded") for d in fingerprint_differences({"cpu": now["cpu"]}, now))


def test_only_another_cpu_makes_a_baseline_incomparable():
    now = machine_fingerprint()
    from optcv.env import same_machine

    assert same_machine(fingerprint_differences({"fingerprint": {**now, "torch": "0.1"}}, now))
    assert not same_machine(fingerprint_differences({"fingerprint": {**now, "cpu": "Other"}}, now))
    assert not same_machine(fingerprint_differences({"cpu": now["cpu"]}, now))  # ISA flags not recorded


def test_ratio_gate_needs_only_the_models_measured():
    baseline = {"schema": "optcv-ratio-baseline/1", "ratios": {
        "tutorial:pytorch/onnxruntime": {"ratio": 4.0, "ci_low": 3.9, "ci_high": 4.1},
        "tunable:pytorch/onnxruntime": {"ratio": 2.3, "ci_low": 2.2, "ci_high": 2.4}}}
    measured = {"tutorial:pytorch/onnxruntime": {"ratio": 4.0, "ci_low": 3.9, "ci_high": 4.1}}
    assert [f.key for f in ratio_gate(measured, baseline)] == ["tutorial:pytorch/onnxruntime"]
    with pytest.raises(BaselineMissing, match="no ratios for tuned"):
        ratio_gate({"tuned:pytorch/onnxruntime": measured["tutorial:pytorch/onnxruntime"]}, baseline)
    broken = {**baseline, "ratios": {"tutorial:pytorch/onnxruntime": {"ci_low": 1}}}
    with pytest.raises(BaselineInvalid, match="ratio"):
        ratio_gate(measured, broken)


def test_gate_markdown_names_the_failing_case_and_its_profile():
    from optcv.report.gate import gate_failure_lines, gate_markdown

    finding = CaseFinding("tutorial/onnxruntime/b1/t1", 25.0, 27.5, 10.0, 8.0, 12.0, 3.0, Verdict.REGRESSION, 30, 200,
                          profile={"base": {"ops_us_per_call": {"Conv": 10.0}, "wall_us_per_call": 25.0},
                                   "head": {"ops_us_per_call": {"Conv": 12.5}, "wall_us_per_call": 27.5}})
    side = {"revision": "HEAD~1 (abc)", "tree": "/t", "python": "py", "versions": {"torch": "x"}, "code_hash": "h"}
    result = GateResult(side, {**side, "revision": None}, [finding], {"workers_per_side": 2, "seed": 0,
                        "statistic": "s"}, {"cpu": "cpu", "cpu_count": 2}, 60.0)
    text = gate_markdown(result)
    assert "1 of 1 cases slower" in text and "**REGRESSION**" in text and "| Conv" in text
    assert gate_failure_lines(result)[0].startswith("SPEED REGRESSION: tutorial/onnxruntime/b1/t1 +10.0 %")


def test_cli_gate_set_up_errors_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "thresholds.json"
    bad.write_text("{")
    assert main(["gate", "--thresholds", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "thresholds file" in err[0] and "Traceback" not in err[0]
    results = tmp_path / "bench.json"
    results.write_text("{}")
    assert main(["gate", str(results)]) == 2
    assert "--baseline" in capsys.readouterr().err


def _finding(case, change, verdict):
    return CaseFinding(case, 100.0, 100.0 + change, change, change - 1.0, change + 1.0, 3.0, verdict, 30, 10)


def test_a_failing_case_is_retested_with_fresh_workers_and_only_a_confirmed_one_fails(tmp_path, monkeypatch):

    from optcv.gate import timing
    from optcv.gate.sides import HEAD_TREE, Side

    specs = [{"id": c} for c in ("a/pytorch/b1/t1", "b/pytorch/b1/t1", "c/pytorch/b1/t1")]
    slow, same = Verdict.REGRESSION, Verdict.NO_CHANGE
    passes = {0: [_finding("a/pytorch/b1/t1", 9.0, slow), _finding("b/pytorch/b1/t1", 9.0, slow),
                  _finding("c/pytorch/b1/t1", 0.0, same)],
              1: [_finding("a/pytorch/b1/t1", 8.0, slow), _finding("b/pytorch/b1/t1", 0.5, same)]}
    calls = []

    def fake_time_cases(sides, specs_, config, thresholds, workdir, setup, log, progress, attempt):
        calls.append(([s.label for s in sides], [s["id"] for s in specs_], attempt))
        return passes[attempt], {"base": {}, "head": {}}

    monkeypatch.setattr(timing, "_time_cases", fake_time_cases)
    monkeypatch.setattr(timing, "case_specs", lambda config: specs)
    monkeypatch.setattr(timing, "prepare_inputs", lambda workdir, data_dir: ({}, "data"))
    side = Side("base", sys.executable, HEAD_TREE)
    built = {"code_hash": "h", "versions": {}}
    result = timing.measure(side, dataclasses.replace(side, label="head"), GateConfig(), Thresholds(), data_dir=None,
                        cache_dir=tmp_path, workdir=tmp_path, log=lambda _m: None,
                        artifacts={"base": built, "head": built})
    assert calls[1] == (["head", "base"], ["a/pytorch/b1/t1", "b/pytorch/b1/t1"], 1)  # fresh pool, head first
    assert [f.case for f in result.regressions] == ["a/pytorch/b1/t1"]
    assert [f.change_pct for f in result.findings] == [8.0, 0.5, 0.0]  # the re-test's numbers decide
    assert [f.change_pct for f in result.retested] == [9.0, 9.0]
    calls.clear()
    result = timing.measure(side, dataclasses.replace(side, label="head"), GateConfig(retest_failures=False),
                            Thresholds(), data_dir=None, cache_dir=tmp_path, workdir=tmp_path, log=lambda _m: None,
                        artifacts={"base": built, "head": built})
    assert len(calls) == 1 and len(result.regressions) == 2


def test_self_test_judges_each_threshold_as_a_gate_with_retests_would():
    from optcv.gate.selftest import SelfTestRun

    first = {"x": CaseFinding("x", 100, 104, 4.0, 2.5, 5.5, 2.0, Verdict.REGRESSION, 30, 10)}
    retest = CaseFinding("x", 100, 102.5, 2.5, 1.0, 4.0, 2.0, Verdict.REGRESSION, 30, 10)
    run = SelfTestRun("pytorch", 3.0, 0, [retest], 1.0, first)
    assert run.verdict(retest, 2.0) is Verdict.REGRESSION  # both passes above 2 %
    assert run.verdict(retest, 3.0) is Verdict.SLOWER_WITHIN_THRESHOLD  # first pass flagged at 3, re-test did not
    assert run.verdict(retest, 5.0) is Verdict.SLOWER_WITHIN_THRESHOLD  # first pass alone stays under 5
    plain = SelfTestRun(None, 0.0, 0, [first["x"]], 1.0)
    assert plain.verdict(first["x"], 3.0) is Verdict.REGRESSION
