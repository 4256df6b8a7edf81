"""Where a failing case's time went, by operator: ONNX Runtime's own profiler for its backends, torch.profiler
otherwise, and the time of the same profiled calls outside every operator."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .cases import Case, pin_threads
from .protocol import Profiled


def profile(case: Case, calls: int) -> Profiled:
    """Per-operator time per call (ONNX Runtime's own profiler for its backends, torch.profiler otherwise) and
    the time of the same profiled calls outside every operator (never below zero), so what lies outside the
    operators shows and both add up to the profiled call."""
    pin_threads(case.cpus)
    session = getattr(getattr(case, "predictor", None), "session", None)
    if case.spec.kind == "predict" and case.spec.backend.startswith("onnxruntime") and session is not None:
        ops, wall_us = _ort_profile(case, session, calls)
    else:
        ops, wall_us = _torch_profile(case, calls)
    return Profiled(ops, wall_us, max(0.0, wall_us - sum(ops.values())))


def _timed_calls(case: Case, calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        case.call()
    return (time.perf_counter_ns() - started) / 1000 / calls


def _torch_profile(case: Case, calls: int) -> tuple[dict[str, float], float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall_us = _timed_calls(case, calls)
    ops = {e.key: e.self_cpu_time_total / calls for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return ops, wall_us


def _ort_profile(case: Case, session: Any, calls: int) -> tuple[dict[str, float], float]:
    # Profiling cannot be switched on in the predictor's own session: a twin with the same model file and
    # threads takes its place for the profiled calls, so the side's whole predict path runs around it. Its trace
    # goes to a folder of its own: ONNX Runtime's default is the working directory, the user's repository.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(case.settings.get("threads") or 1)
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.log_severity_level = 3
    model_path = getattr(session, "_model_path", None) or case.onnx_path
    with tempfile.TemporaryDirectory(prefix="optcv-ort-profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / "twin")
        twin = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        case.predictor.session = twin
        try:
            wall_us = _timed_calls(case, calls)
        finally:
            case.predictor.session = session
            trace = Path(twin.end_profiling())
        return _ort_operator_totals(json.loads(trace.read_text()), calls), wall_us


def _ort_operator_totals(events: list[dict[str, Any]], calls: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", event["name"])
            totals[op] = totals.get(op, 0.0) + float(event.get("dur", 0)) / calls
    return totals


