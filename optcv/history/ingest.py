"""Every result file optcv writes, and pytest-benchmark's, turned into a RunRecord: one reader per source, chosen by
the file's schema (pytest-benchmark's by its keys), so `optcv history import` and the commands' own recording take
the same path."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optcv._io import read_json_object
from optcv.env import cpu_model, isa_flags
from optcv.errors import OptcvError
from optcv.gate.verdict import RESULT_SCHEMA as GATE_SCHEMA
from optcv.gate.verdict import SAME_CODE_SCHEMA
from optcv.history.records import (
    BENCH,
    CHANGE_PCT,
    GATE,
    HOW_FAST,
    INSTRUCTIONS,
    INSTRUCTIONS_CHANGE_PCT,
    LATENCY_US,
    MEMORY_CHANGE_PCT,
    PEAK_KIB,
    PYTEST_BENCHMARK,
    THROUGHPUT,
    UNKNOWN_ISA,
    Machine,
    Measurement,
    RunRecord,
    now_utc,
)
from optcv.measure.howfast import HOW_FAST_SCHEMA
from optcv.measure.latency import RESULT_SCHEMA as BENCH_SCHEMA


class HistoryInputError(OptcvError):
    """A file given to the history is not a result it can read."""


def record_of(data: dict[str, Any], *, source: str = "", commit: str | None = None, branch: str | None = None,
              summary: str = "", recorded_at: datetime | None = None) -> RunRecord:
    """The run a result (a command's `to_dict()`, or a JSON file's content) describes. `commit` and `branch`
    override what the result itself says."""
    reader = _reader_of(data, source)
    record = reader(data, source)
    return RunRecord(record.kind, recorded_at or record.recorded_at, record.machine, commit or record.commit,
                     branch or record.branch, record.versions, record.passed, summary or record.summary,
                     source or record.source, record.details, record.measurements)


@dataclass(frozen=True)
class NothingTimed:
    """A result file with no numbers to record: a gate whose base and head ran the same timed code."""

    source: str
    base: str
    head: str


def record_of_file(path: Path, *, commit: str | None = None, branch: str | None = None) -> RunRecord | NothingTimed:
    data = read_json_object(path, "result file", "give a JSON file written by optcv (--json) or pytest-benchmark")
    if data.get("schema") == SAME_CODE_SCHEMA:
        return NothingTimed(str(path), str(data.get("base", "")), str(data.get("head", "")))
    # optcv's result files carry no time of their own: the file's is the best that is known.
    written = None if _has_time(data) else datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    return record_of(data, source=str(path), commit=commit, branch=branch, recorded_at=written)


def _has_time(data: dict[str, Any]) -> bool:
    return bool(data.get("recorded_at") or data.get("datetime"))


def _reader_of(data: dict[str, Any], source: str) -> Callable[[dict[str, Any], str], RunRecord]:
    schema = data.get("schema")
    readers = {GATE_SCHEMA: _gate_record, BENCH_SCHEMA: _bench_record, HOW_FAST_SCHEMA: _how_fast_record}
    if schema in readers:
        return readers[schema]
    if {"benchmarks", "machine_info"} <= data.keys():
        return _pytest_benchmark_record
    what = f"schema {schema!r}" if schema else "no schema"
    raise HistoryInputError(f"{source or 'the result'} has {what}: the history reads `optcv gate --json`, `optcv "
                            "bench --json`, `optcv how-fast --json` and pytest-benchmark JSON files")


def _machine(environment: dict[str, Any]) -> Machine:
    """The machine of a result's environment. Results that predate the ISA field get UNKNOWN_ISA, so they are never
    drawn on one line with runs whose flags are known; this machine's flags are used only for a result just made."""
    isa = environment.get("isa")
    return Machine(str(environment.get("cpu", "unknown CPU")), tuple(sorted(isa)) if isa else UNKNOWN_ISA,
                   int(environment.get("cpu_count") or 0))


def this_machine() -> Machine:
    return _machine(current_machine_environment({"cpu": cpu_model(), "cpu_count": os.cpu_count()}))


def current_machine_environment(environment: dict[str, Any]) -> dict[str, Any]:
    """A result made in this process, with this machine's ISA flags added (results carry CPU and cores only)."""
    return {**environment, "isa": environment.get("isa") or isa_flags()}


def _gate_record(data: dict[str, Any], source: str) -> RunRecord:
    measurements = tuple(
        Measurement(f["case"], CHANGE_PCT, f["change_pct"], f["ci_low_pct"], f["ci_high_pct"], f["rounds"],
                    f["verdict"], f["threshold_pct"]) for f in data["findings"])
    medians = tuple(Measurement(f["case"], LATENCY_US, f["head_median_us"], n=f["rounds"]) for f in data["findings"])
    measurements += tuple(m for found in data.get("measured", []) for m in _measured(found))
    env = data["environment"]
    head = data.get("head", {})
    return RunRecord(GATE, _time(data.get("recorded_at")), _machine(env), head.get("commit"), head.get("branch"),
                     dict(env.get("versions", {})), passed=not any(m.failed for m in measurements), source=source,
                     details={"base": data.get("base"), "head": head, "protocol": data.get("protocol"),
                              "seconds": data.get("seconds"),
                              **({"uncommitted_changes": True} if head.get("uncommitted_changes") else {})},
                     measurements=measurements + medians)


_MEASURED_METRICS = {"memory": (MEMORY_CHANGE_PCT, PEAK_KIB), "instructions": (INSTRUCTIONS_CHANGE_PCT, INSTRUCTIONS)}


def _measured(found: dict[str, Any]) -> tuple[Measurement, Measurement]:
    """A gate's memory or instruction finding: its change with the range and verdict, and the head's median value
    with its repeats' range."""
    change_metric, value_metric = _MEASURED_METRICS[found["measure"]]
    head = sorted(found["head"])
    return (Measurement(found["case"], change_metric, found["change_pct"], found["ci_low_pct"], found["ci_high_pct"],
                        min(len(found["base"]), len(head)), found["verdict"], found["threshold_pct"]),
            Measurement(found["case"], value_metric, float(head[len(head) // 2]), head[0], head[-1], len(head)))


def _bench_measurements(bench: dict[str, Any], model: str) -> Iterator[Measurement]:
    for backend, values in bench["backends"].items():
        latency = values["latency_us"]
        yield Measurement(f"{model}/{backend}/b1", LATENCY_US, latency["median_us"], latency.get("median_ci_low_us"),
                          latency.get("median_ci_high_us"), latency.get("n"))
        for batch, rate in values.get("throughput", {}).items():
            yield Measurement(f"{model}/{backend}/b{batch}", THROUGHPUT, rate["images_per_s"], rate.get("ci_low"),
                              rate.get("ci_high"), rate.get("rounds"))


def _bench_record(data: dict[str, Any], source: str) -> RunRecord:
    env = data["environment"]
    return RunRecord(BENCH, _time(data.get("recorded_at")), _machine(env), versions=dict(env.get("versions", {})),
                     source=source, details={"model": data.get("model"), "config": data.get("config")},
                     measurements=tuple(_bench_measurements(data, data.get("model") or "model")))


def _how_fast_record(data: dict[str, Any], source: str) -> RunRecord:
    env = data["environment"]
    measurements = tuple(m for model in data["models"] for m in _bench_measurements(model["bench"], model["model"]))
    return RunRecord(HOW_FAST, _time(data.get("recorded_at")), _machine(env), versions=dict(env.get("versions", {})),
                     source=source, details={"config": data.get("config")}, measurements=measurements)


def _pytest_benchmark_record(data: dict[str, Any], source: str) -> RunRecord:
    """pytest-benchmark's per-round statistics: the median of the rounds (per call), with the median's approximate
    95 % interval median ± 1.57·IQR/√rounds (McGill, Tukey and Larsen's notch; the file keeps no samples)."""
    machine_info, commit_info = data["machine_info"], data.get("commit_info", {})
    measurements = []
    for bench in data["benchmarks"]:
        stats = bench["stats"]
        median, rounds = stats["median"] * 1e6, int(stats["rounds"])
        half = 1.57 * stats["iqr"] * 1e6 / math.sqrt(rounds) if rounds > 1 else None
        measurements.append(Measurement(bench["name"], LATENCY_US, median, None if half is None else median - half,
                                        None if half is None else median + half, rounds))
        measurements += _pytest_gate_change(bench)
    versions = {k: str(machine_info[k]) for k in ("torch", "onnxruntime", "python_version") if k in machine_info}
    dirty = commit_info.get("dirty")
    gated = [m for m in measurements if m.metric == CHANGE_PCT]
    # The entries are kept whole: `optcv history baseline` writes them back for --benchmark-compare.
    return RunRecord(PYTEST_BENCHMARK, _time(data.get("datetime")), _machine(machine_info), commit_info.get("id"),
                     commit_info.get("branch"), versions, passed=not any(m.failed for m in gated) if gated else None,
                     source=source,
                     details={"dirty": dirty, "pytest_benchmark": data.get("version"), "machine_info": machine_info,
                              "commit_info": commit_info, "benchmarks": data["benchmarks"]},
                     measurements=tuple(measurements))


def _pytest_gate_change(bench: dict[str, Any]) -> list[Measurement]:
    """A test that `pytest --gate-against` compared (optcv.plugin.ab): its change against the base, with the interval
    and the verdict."""
    finding = (bench.get("extra_info", {}).get("optcv_gate") or {}).get("finding")
    if not finding:
        return []
    return [Measurement(bench["name"], CHANGE_PCT, finding["change_pct"], finding["ci_low_pct"], finding["ci_high_pct"],
                        finding["rounds"], finding["verdict"], finding["threshold_pct"])]


def _time(text: str | None) -> datetime:
    if not text:
        return now_utc()
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise HistoryInputError(f"time {text!r} has no time zone; the history needs UTC or an offset")
    return when

