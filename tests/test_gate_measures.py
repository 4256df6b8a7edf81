"""Memory and instruction counts in the gate: the rule over repeats, thresholds per measure, callgrind's dumps,
the injections that the self-test checks them with, and their reports (no timing, no valgrind)."""

import os
from pathlib import Path

import pytest

from optcv.errors import GateSetupError, PerformanceRegression
from optcv.gate.inject import write_injection
from optcv.gate.instructions import UNNAMED, changed_functions, read_dump
from optcv.gate.verdict import GateResult, Thresholds, Verdict, judge_repeats, repeat_change
from optcv.gate.worker.protocol import Built, CaseSpec, CountInstructions, DeclaredModelFiles
from optcv.report.gate import gate_failure_lines, gate_markdown


def test_repeats_judge_a_growth_only_where_every_head_repeat_lies_above_every_base_one():
    assert repeat_change([100, 100, 100], [100, 100, 100]).change_pct == 0
    found = judge_repeats("memory", "m/pytorch/b1/t1", [100, 101, 99], [112, 111, 113], 10.0)
    assert found.verdict is Verdict.REGRESSION and found.change_pct == pytest.approx(12.0)
    assert found.ci_low_pct == pytest.approx(100 * (111 / 101 - 1)) and found.ci_high_pct == pytest.approx(
        100 * (113 / 99 - 1))
    just_below = judge_repeats("memory", "c", [100, 101, 99], [109, 110, 109], 10.0)
    assert just_below.verdict is Verdict.SLOWER_WITHIN_THRESHOLD
    overlapping = judge_repeats("memory", "c", [100, 120, 99], [125, 119, 121], 10.0)  # 121/100: +21 %, not certain
    assert overlapping.change_pct > 10 and overlapping.verdict is Verdict.NO_CHANGE
    exact = judge_repeats("instructions", "c", [1e6, 1e6], [1.011e6, 1.011e6], 1.0)
    assert exact.verdict is Verdict.REGRESSION and exact.ci_low_pct == pytest.approx(1.1)
    assert judge_repeats("instructions", "c", [1e6], [0.9e6], 1.0).verdict is Verdict.FASTER
    with pytest.raises(ValueError):
        repeat_change([], [1.0])


def test_each_measure_has_its_own_thresholds_in_the_same_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"schema": "optcv-gate-thresholds/1", "default": 3, "cases": {"a/*": 9},'
                    ' "memory": {"default": 12, "cases": {"b/*": 20}}}')
    thresholds = Thresholds.load(path)
    assert thresholds.for_case("a/pytorch/b1/t1") == 9 and thresholds.for_case("a/x", "memory") == 12
    assert thresholds.for_case("b/x", "memory") == 20 and thresholds.for_case("b/x", "instructions") == 0.5
    assert Thresholds().for_case("x", "memory") == 5.0
    path.write_text('{"schema": "optcv-gate-thresholds/1", "memory": {"default": "ten"}}')
    with pytest.raises(GateSetupError, match="memory: default"):
        Thresholds.load(path)


DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
cmd: python worker.py instructions
desc: I1 cache:
desc: Trigger: Client Request: tutorial/onnxruntime/b1/t1
positions: line
events: Ir
summary: 1507
ob=/usr/lib/libm.so
fl=???
fn=MlasSgemmKernel
0 1000
fn=PyEval_EvalFrame
0 300
cfl=???
cfn=MlasSgemmKernel
calls=2 0
0 700
0 200
ob=/venv/lib/onnxruntime_pybind11_state.so
fn=0x00000000e2c54000
0 4
fn=0x00000000e2d14000
0 3
totals: 1507
"""


def test_a_callgrind_dump_gives_its_label_total_and_each_functions_own_instructions(tmp_path):
    path = tmp_path / "cg.out.1"
    path.write_text(DUMP)
    dump = read_dump(path)
    # The 700 after calls= is the callee's inclusive cost, already counted as MlasSgemmKernel's own.
    # Code without a symbol (JIT-compiled kernels) lies at addresses that differ between processes: one row.
    assert dump == {"label": "tutorial/onnxruntime/b1/t1", "total": 1507,
                    "functions": {"MlasSgemmKernel": 1000, "PyEval_EvalFrame": 500,
                                  f"{UNNAMED} in onnxruntime_pybind11_state.so": 7}}


def test_the_functions_that_changed_most_come_first_and_unchanged_ones_are_left_out():
    base = [{"gemm": 1000.0, "eval": 500.0, "same": 7.0}] * 2
    head = [{"gemm": 1010.0, "eval": 900.0, "same": 7.0, "extra_work": 50.0}] * 2
    rows = changed_functions(base, head)
    assert [r["function"] for r in rows] == ["eval", "extra_work", "gemm"]
    assert rows[0]["change_per_call"] == 400.0


def _template_namespace(folder: Path, fractions, work=None) -> dict:
    text = (write_injection(folder, fractions, work) / "sitecustomize.py").read_text()
    namespace: dict = {}
    exec(compile(text.rsplit("\n_inject(", 1)[0], "sitecustomize", "exec"), namespace)
    return namespace


def test_the_memory_injection_keeps_its_fraction_of_what_the_case_made_resident(tmp_path):
    namespace = _template_namespace(tmp_path, {"memory": 0.25})
    # As the gate's memory child does: the peak restarts here, whatever this process held before the test.
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")
    namespace["_rebase_memory"]()
    held, peaks_kib = [], []

    def predict():
        buffer = bytearray(64 * 2**20)
        buffer[::4096] = b"\x01" * len(range(0, len(buffer), 4096))
        held.append(buffer)
        peaks_kib.append(namespace["_status_kib"]("VmHWM"))

    unit = namespace["_timed_unit"](predict, 0.0, memory=0.25)
    unit()
    assert len(namespace["_memory"]["kept"]) == 0  # the case's first call: still setting up
    unit()
    made_resident = (peaks_kib[-1] - namespace["_memory"]["baseline_kib"]) * 1024
    kept = len(namespace["_memory"]["kept"])
    # A quarter of the peak the two calls reached (128 MiB in a fresh heap; less where freed memory that was
    # still resident got reused).
    assert made_resident > 64 * 2**20 and kept == pytest.approx(made_resident / 4, rel=0.05)
    unit()
    assert len(namespace["_memory"]["kept"]) == kept  # kept once, never grown: freed blocks would stay resident
    assert len(_template_namespace(tmp_path / "none", {"memory": 0.0})["_memory"]["kept"]) == 0


def test_the_work_injection_runs_its_cases_own_iterations_and_none_elsewhere(tmp_path, monkeypatch):
    namespace = _template_namespace(tmp_path, {"work": 0.01}, {"m/onnxruntime/b1/t1": 1234})
    done = []
    namespace["extra_work"] = done.append
    unit = namespace["_timed_unit"](lambda: None, 0.0, work=True)
    monkeypatch.setenv("OPTCV_GATE_CASE", "m/onnxruntime/b1/t1")
    unit()
    monkeypatch.setenv("OPTCV_GATE_CASE", "m/pytorch/b1/t1")
    unit()
    assert done == [1234, 0]
    x = 1
    for _ in range(3):
        x = (x * 75 + 74) % 65537
    assert _template_namespace(tmp_path / "loop", {})["extra_work"](3) == x  # plain arithmetic, no clock


def test_a_fractional_work_level_is_carried_over_so_its_mean_per_call_is_exact(tmp_path, monkeypatch):
    """0.25 % of a 0.57 M-instruction call is 1.65 iterations of ~860: whole iterations per call made it 0.15 or
    0.30 %; the fraction owed is carried to the next call."""
    namespace = _template_namespace(tmp_path, {"work": 0.01}, {"m/onnxruntime/b1/t1": 1.65})
    done = []
    namespace["extra_work"] = done.append
    unit = namespace["_timed_unit"](lambda: None, 0.0, work=True)
    monkeypatch.setenv("OPTCV_GATE_CASE", "m/onnxruntime/b1/t1")
    for _ in range(100):
        unit()
    assert set(done) == {1, 2} and sum(done) == 165


def _result(measured) -> GateResult:
    side = {"revision": "abc", "tree": "/t", "python": "python", "versions": {}, "code_hash": "h"}
    return GateResult(side, side, [], {"workers_per_side": 2, "seed": 0, "statistic": "s"},
                      {"cpu": "cpu", "cpu_count": 2}, 1.0, measured=measured)


def test_a_memory_or_instruction_regression_fails_the_gate_and_is_reported_as_such():
    grown = judge_repeats("memory", "m/pytorch/b1/t1", [40_000] * 3, [44_800] * 3, 5.0,
                          {"base_retained_kib_per_call": 0.0, "head_retained_kib_per_call": 0.0})
    more = judge_repeats("instructions", "m/onnxruntime/b1/t1", [2e6, 2e6], [2.02e6, 2.02e6], 0.5,
                         {"cpu_capability": {"base": "AVX2", "head": "AVX2"},
                          "functions": [{"function": "extra_work", "base_per_call": 0.0, "head_per_call": 2e4,
                                         "change_per_call": 2e4}]})
    result = _result([grown, more])
    assert result.failures == [grown, more] and not result.regressions
    with pytest.raises(PerformanceRegression, match="m/pytorch/b1/t1 memory"):
        result.raise_for_regressions()
    lines = gate_failure_lines(result)
    assert lines[0].startswith("MEMORY REGRESSION: m/pytorch/b1/t1 +12.0 %")
    assert lines[1].startswith("INSTRUCTION REGRESSION: m/onnxruntime/b1/t1 +1.0 %") and "extra_work" in lines[1]
    markdown = gate_markdown(result)
    assert "### Memory" in markdown and "### Instructions per call" in markdown and "AVX2" in markdown
    assert markdown.startswith("## optcv gate: FAILED; instructions: 1 of 1 cases beyond their threshold; "
                               "memory: 1 of 1 cases beyond their threshold\n")
    assert not _result([judge_repeats("memory", "c", [1.0], [1.0], 10.0)]).failures


def test_the_gate_refuses_an_unknown_measure():
    from optcv.errors import OptcvError
    from optcv.gate.config import GateConfig

    with pytest.raises(OptcvError, match="unknown gate measure cycles"):
        GateConfig(measures=("time", "cycles"))
    assert os.environ.get("OPTCV_GATE_CASE") is None


def test_the_history_keeps_each_measures_change_and_the_heads_value():
    from optcv.history.ingest import record_of

    grown = judge_repeats("memory", "m/pytorch/b1/t1", [40_000] * 3, [44_000, 44_800, 45_000], 10.0)
    data = {**_result([grown]).to_dict(), "recorded_at": "2026-12-01T10:00:00+00:00"}
    data["environment"] = {**data["environment"], "isa": ["avx2"]}
    record = record_of(data)
    kept = {(m.metric, m.case): m for m in record.measurements}
    change = kept[("memory_change_pct", "m/pytorch/b1/t1")]
    assert change.value == pytest.approx(12.0) and change.verdict == "regression" and change.n == 3
    assert kept[("peak_kib", "m/pytorch/b1/t1")].value == 44_800 and record.passed is False


def test_instruction_counts_without_valgrind_are_a_one_line_set_up_error(tmp_path, monkeypatch):
    from optcv.gate.instructions import InstructionCountsUnavailable, client_library

    monkeypatch.setenv("PATH", str(tmp_path))  # neither valgrind nor a C compiler on it
    with pytest.raises(InstructionCountsUnavailable, match="needs valgrind and .*a C compiler.*drop --measure"):
        client_library(tmp_path)


def _allocations_of(counter: Path, blocks_per_call: int, block_bytes: int) -> dict:
    """Bytes and blocks per call the memory worker's counter reads for a call that allocates `blocks_per_call`
    NumPy arrays of `block_bytes` (kept until the call returns, as a runtime's activations are)."""
    import json
    import subprocess
    import sys

    script = ("import json, numpy as np\n"
              "from optcv.gate.worker.measures import _allocation_counter\n"
              "counter = _allocation_counter()\n"
              f"call = lambda: [np.ones({block_bytes}, np.uint8) for _ in range({blocks_per_call})]\n"
              "call()\n"
              "before = counter.optcv_allocated_bytes(), counter.optcv_allocated_blocks()\n"
              "for _ in range(10):\n"
              "    call()\n"
              "after = counter.optcv_allocated_bytes(), counter.optcv_allocated_blocks()\n"
              "print(json.dumps({'bytes': (after[0] - before[0]) / 10, 'blocks': (after[1] - before[1]) / 10}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "LD_PRELOAD": str(counter)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_memory_workers_malloc_counter_sees_each_calls_allocations(tmp_path):
    from optcv.gate.memory import allocation_counter

    counter = allocation_counter(tmp_path)
    none = _allocations_of(counter, 0, 1)
    one = _allocations_of(counter, 3, 1_000_000)
    more = _allocations_of(counter, 3, 1_010_000)  # +1 % of the bytes, the same blocks
    assert none["bytes"] < 2_000 and none["blocks"] < 10  # the loop's own list, now and then
    assert 3_000_000 <= one["bytes"] <= 3_000_000 + 2_000 and 3 <= one["blocks"] <= 3 + 10
    assert more["bytes"] - one["bytes"] == pytest.approx(30_000, abs=2_000)


def test_a_memory_worker_without_its_counter_says_so_and_no_compiler_is_a_set_up_error(tmp_path, monkeypatch):
    from optcv.gate.memory import AllocationCountsUnavailable, allocation_counter
    from optcv.gate.worker.measures import _allocation_counter

    with pytest.raises(RuntimeError, match="not preloaded"):
        _allocation_counter()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AllocationCountsUnavailable, match="needs a C compiler.*drop --measure memory"):
        allocation_counter(tmp_path / "empty")


def test_the_instruction_counts_run_as_many_processes_at_once_as_there_are_cores(monkeypatch):
    """On two cores: two processes at once from the start, never three, and the moment one ends the next starts,
    before the scheduler waits again (no core left idle while the other side's process of a repeat finishes)."""
    from optcv.gate import instructions

    events: list[tuple[str, str]] = []
    polls_to_end = {"base0": 3, "head0": 1, "base1": 2, "head1": 4, "base2": 1, "head2": 1}

    class Process:
        def __init__(self, label: str):
            self.label, self.polls, self.ended = label, 0, False

        def poll(self):
            self.polls += 1
            if self.polls >= polls_to_end[self.label] and not self.ended:
                self.ended = True
                events.append(("end", self.label))
            return 0 if self.ended else None

    def start(repeat, side):
        events.append(("start", f"{side.label}{repeat}"))
        return {"process": Process(f"{side.label}{repeat}"), "label": f"{side.label}{repeat}"}

    monkeypatch.setattr(instructions.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(instructions.time, "sleep", lambda _s: events.append(("sleep", "")))
    monkeypatch.setattr(instructions, "collect_count", lambda count: {"case_s": {"c": 0.1}, "label": count["label"]})
    sides = [type("S", (), {"label": label})() for label in ("base", "head")]
    jobs = [(repeat, side) for repeat in range(3) for side in sides]
    log: list[str] = []
    done = instructions._run_all(jobs, start, log.append)
    assert {key: r["label"] for key, r in done.items()} == {(r, s.label): f"{s.label}{r}" for r, s in jobs}
    assert [kind for kind, _ in events[:2]] == ["start", "start"]
    running, started = 0, 0
    for i, (kind, _) in enumerate(events):
        running += {"start": 1, "end": -1}.get(kind, 0)
        started += kind == "start"
        assert running <= 2, events
        if kind == "end" and started < len(jobs):  # the next thing after an end is a start, not a wait
            assert next(k for k, _ in events[i + 1:] if k != "end") == "start", events
    assert len(log) == 6 and log[-1].startswith("instructions: 6/6, the ")


def test_a_net_with_more_arithmetic_gets_fewer_counted_calls_within_the_bounds():
    """Under valgrind a call's time grows with its multiply-accumulates: the course's nets get 100 and 25 calls."""
    from optcv.gate import instructions
    from optcv.gate.worker.measures import counted_calls
    from optcv.measure.reference import REFERENCE_MODELS
    from optcv.training.models import build_model, count_macs

    request = CountInstructions({}, Built({}, "", {}, ""), (), "", instructions.COUNTED_CALLS,
                                instructions.MIN_COUNTED_CALLS, instructions.COUNTED_MACS, 1.0, 1)
    macs = {name: count_macs(build_model(REFERENCE_MODELS[name].model)) for name in ("tutorial", "tunable")}
    assert counted_calls(macs["tutorial"], request) == 100
    assert counted_calls(macs["tunable"], request) == 25
    assert counted_calls(instructions.COUNTED_MACS // 50, request) == 50
    assert counted_calls(None, request) == 100  # no PyTorch net to count (an ONNX-only declared model)


def test_the_instruction_worker_counts_a_declared_nets_multiply_accumulates_per_call(tmp_path, monkeypatch):
    """A user's declared net is counted by the side's own counter at the case's batch, on its declared input."""
    from optcv.gate.worker import build, measures
    from optcv.gate.worker.cases import Case
    from tests.user_repo import write_user_repo

    write_user_repo(tmp_path)
    monkeypatch.setattr(build, "DECLARED", {})
    spec = CaseSpec("tiny", "predict", "pytorch", batch=4, threads=1, declared=True)
    assert spec.id == "tiny/pytorch/b4/t1"
    files = DeclaredModelFiles("tiny", "pyproject.toml", ("pytorch",), str(tmp_path), str(tmp_path / "cache"), "")
    case = Case(spec, Built({"tiny": files}, "h", {}, ""), {})
    conv, linear = 16 * 16 * 4 * (3 * 3 * 3), 4 * 5  # Tiny: a 3x3 conv to 4 channels on 16x16, a 4-to-5 head
    assert measures._macs_per_call(case) == 4 * (conv + linear)
