"""The gate's other checks and words: machine fingerprints and the ratio fallback, per-operator attribution, the
summary's warnings and the CLI's set-up errors."""

import json

import pytest

from optcv.cli import main
from optcv.env import fingerprint_differences, machine_fingerprint
from optcv.errors import (
    BaselineInvalid,
    BaselineMissing,
    BaselineOtherMachine,
)
from optcv.gate.attribution import OUTSIDE, attribution, named_changes, operator_changes, outside_us
from optcv.gate.ratio import baseline_for, make_baseline, ratio_gate, ratios_of
from optcv.gate.verdict import (
    CaseFinding,
    GateResult,
    Verdict,
)
from tests.gate_helpers import profiles_of


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
    recorded = {"tutorial:pytorch/onnxruntime": {"ratio": 4.0, "ci_low": 3.9, "ci_high": 4.1},
                "tunable:pytorch/onnxruntime": {"ratio": 2.3, "ci_low": 2.2, "ci_high": 2.4}}
    measured = {"tutorial:pytorch/onnxruntime": {"ratio": 4.0, "ci_low": 3.9, "ci_high": 4.1}}
    assert [f.key for f in ratio_gate(measured, recorded)] == ["tutorial:pytorch/onnxruntime"]
    with pytest.raises(BaselineMissing, match="no ratios for tuned"):
        ratio_gate({"tuned:pytorch/onnxruntime": measured["tutorial:pytorch/onnxruntime"]}, recorded)
    with pytest.raises(BaselineInvalid, match="ratio"):
        ratio_gate(measured, {"tutorial:pytorch/onnxruntime": {"ci_low": 1}})


def _bench(ratio, model="tutorial"):
    return {"schema": "optcv-bench/1", "model": model,
            "ratios": {"pytorch/onnxruntime": {"ratio": ratio, "ci_low": ratio - 0.1, "ci_high": ratio + 0.1}}}


def _recorded_on(baseline, **fields):
    for entry in baseline["machines"]:
        entry["fingerprint"] = {**entry["fingerprint"], **fields}
    return baseline


def test_a_ratio_baseline_gates_the_machine_it_was_recorded_on_and_no_other():
    here = make_baseline([_bench(4.0)])
    recorded, differences = baseline_for(here, machine_fingerprint())
    assert differences == [] and [f.passed for f in ratio_gate(ratios_of(_bench(3.0)), recorded)] == [False]
    newer_torch = _recorded_on(make_baseline([_bench(4.0)]), torch="0.0.1")
    recorded, differences = baseline_for(newer_torch, machine_fingerprint())
    assert recorded and differences == [f"torch: 0.0.1 → {machine_fingerprint()['torch']}"]
    for other in ({"cpu": "Another CPU"}, {"isa": ["sse2"]}, {"cpu_count": 64}):
        with pytest.raises(BaselineOtherMachine, match="no speed-ups recorded on this machine .*--ratio-save"):
            baseline_for(_recorded_on(make_baseline([_bench(4.0)]), **other), machine_fingerprint())
    legacy = {"schema": "optcv-ratio-baseline/1", "environment": {"cpu": machine_fingerprint()["cpu"]},
              "ratios": recorded}
    with pytest.raises(BaselineOtherMachine, match="ISA flags not recorded"):
        baseline_for(legacy, machine_fingerprint())


def test_recording_ratios_replaces_this_machines_entry_and_keeps_the_others():
    elsewhere = _recorded_on(make_baseline([_bench(9.0)]), cpu="Another CPU")
    both = make_baseline([_bench(4.0)], make_baseline([_bench(5.0)], elsewhere))
    assert [e["fingerprint"]["cpu"] for e in both["machines"]] == ["Another CPU", machine_fingerprint()["cpu"]]
    assert baseline_for(both, machine_fingerprint())[0]["tutorial:pytorch/onnxruntime"]["ratio"] == 4.0


def test_cli_gates_bench_files_only_on_this_machines_ratios(tmp_path, capsys):
    (tmp_path / "slow.json").write_text(json.dumps(_bench(2.0)))
    (tmp_path / "here.json").write_text(json.dumps(make_baseline([_bench(4.0)])))
    (tmp_path / "other.json").write_text(json.dumps(_recorded_on(make_baseline([_bench(4.0)]), cpu="Another CPU")))
    assert main(["gate", str(tmp_path / "slow.json"), "--baseline", str(tmp_path / "here.json")]) == 1
    assert "SPEED REGRESSION" in capsys.readouterr().out
    assert main(["gate", str(tmp_path / "slow.json"), "--baseline", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no speed-ups recorded on this machine" in err[0] and "Another CPU" in err[0]


def test_the_committed_ratio_baseline_records_each_machine_with_its_isa_flags():
    from optcv.gate.ratio import DEFAULT_BASELINE, machine_entries

    entries = machine_entries(json.loads(DEFAULT_BASELINE.read_text()))
    assert entries and all(e["fingerprint"]["isa"] and e["fingerprint"]["cpu_count"] for e in entries)


def test_attribution_names_an_added_operator_or_a_wait_outside_and_nothing_unchanged():
    base = profiles_of(8, seed=1)
    added = named_changes(attribution(base, profiles_of(8, seed=2, extra_op=10.0), calls=50))
    assert [c.operator for c in added] == ["aten::gelu"] and 9 < added[0].change_us < 11
    waited = named_changes(attribution(base, profiles_of(8, seed=3, outside_wait=15.0), calls=50))
    assert [c.operator for c in waited] == [OUTSIDE] and 12 < waited[0].change_us < 18
    assert named_changes(attribution(base, profiles_of(8, seed=4), calls=50)) == []
    assert outside_us(90.0, {"a": 60.0, "b": 50.0}) == 0.0  # operators on two threads can outlast the call
    with pytest.raises(ValueError, match="paired"):
        operator_changes(base, base[:3])


def test_gate_markdown_names_the_failing_case_and_only_the_operators_that_changed():
    from optcv.report.gate import gate_failure_lines, gate_markdown

    profile = attribution(profiles_of(8, seed=1), profiles_of(8, seed=2, extra_op=10.0), calls=50)
    finding = CaseFinding("tutorial/pytorch/b1/t1", 135.0, 145.0, 7.4, 6.0, 9.0, 3.0, Verdict.REGRESSION, 30, 200,
                          profile=profile)
    side = {"revision": "HEAD~1 (abc)", "tree": "/t", "python": "py", "versions": {"torch": "x"}, "code_hash": "h"}
    result = GateResult(side, {**side, "revision": None}, [finding], {"workers_per_side": 2, "seed": 0,
                        "statistic": "s"}, {"cpu": "cpu", "cpu_count": 2}, 60.0)
    text = gate_markdown(result)
    assert "1 of 1 cases slower" in text and "**REGRESSION**" in text and "8 profiles of 50 calls" in text
    named = [line for line in text.splitlines() if line.rstrip(" |").endswith("yes")]
    assert len(named) == 1 and "aten::gelu" in named[0]
    assert "2 other operators (no change named)" in text and "time outside operators" in text
    line = gate_failure_lines(result)[0]
    assert line.startswith("SPEED REGRESSION: tutorial/pytorch/b1/t1 +7.4 %") and "; where: aten::gelu +" in line


def test_the_summary_warns_once_when_a_gates_pairs_disagree_and_per_case_when_coarser_than_its_threshold():
    """Pairs that disagree are common (a per-process offset in most cases on a shared VM): one line for the gate,
    naming the cases whose spread is widest against their rounds; a resolution coarser than a case's threshold is
    named per case, since that case could pass a slowdown of its threshold's size."""
    from optcv.report.gate import gate_markdown

    def found(case, pairs, spread, noise, low, high, disagree):
        return CaseFinding(case, 100.0, 100.0, 0.0, low, high, 3.0, Verdict.NO_CHANGE, 30, 10, pairs, None, 1,
                           spread, noise, disagree)

    findings = [found("a/pytorch/b1/t1", (1.0, -1.0, 0.5, -0.5), 0.9, 0.3, -1.4, 1.4, True),
                found("b/onnxruntime/b1/t1", (3.0, -3.0, 1.0, -1.0), 2.6, 0.4, -4.1, 4.1, True),
                found("c/openvino/b1/t1", (0.1, -0.1, 0.0, 0.0), 0.1, 0.3, -0.2, 0.2, False)]
    side = {"revision": "HEAD~1 (abc)", "tree": "/t", "python": "py", "versions": {"torch": "x"}, "code_hash": "h"}
    protocol = {"workers_per_side": 4, "seed": 0, "statistic": "s"}
    machine = {"cpu": "cpu", "cpu_count": 2}
    text = gate_markdown(GateResult(side, {**side, "revision": None}, findings, protocol, machine, 60.0))
    warnings = [line for line in text.splitlines() if line.startswith("- WARNING")]
    assert len(warnings) == 2 and "in 2 of 3 cases the worker pairs disagree" in warnings[0]
    assert warnings[0].index("b/onnxruntime") < warnings[0].index("a/pytorch") and "c/openvino" not in warnings[0]
    assert warnings[1].startswith("- WARNING b/onnxruntime/b1/t1: resolution ±4.1 % is coarser than its 3 %")


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
