"""pytest-benchmark baselines from the history: per machine (CPU model, ISA flags, cores), the latest number of
every case from the pytest-benchmark runs recorded on the main branch, written where `--benchmark-compare` reads.

The file is named after its machine key (NNNN_machine-KEY.json), so the suite can compare with the baseline of the
machine it runs on, and say so loudly when there is none."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from optcv._io import write_json
from optcv.history.records import PYTEST_BENCHMARK, Machine
from optcv.history.store import HistoryError, HistoryStore

BASELINE_PREFIX = "machine-"


def baseline_name(machine: Machine) -> str:
    return f"{BASELINE_PREFIX}{machine.key}"


def baseline_from_history(store: HistoryStore, machine: Machine, branch: str = "main") -> dict[str, Any]:
    """A pytest-benchmark file holding, for every case recorded on `branch` on `machine`, its latest entry."""
    runs = [r for r in store.runs(kind=PYTEST_BENCHMARK) if r.record.machine == machine
            and r.record.branch == branch and r.record.details.get("benchmarks")]
    if not runs:
        raise HistoryError(f"no pytest-benchmark run on branch {branch} from {machine.label()} in the history; record "
                           "one: pytest benchmarks --benchmark-json F, then optcv history import F")
    latest: dict[str, dict[str, Any]] = {}
    source: dict[str, str | None] = {}
    for run in runs:  # oldest first: a newer run's entry replaces an older one's
        for entry in run.record.details["benchmarks"]:
            latest[entry["fullname"]] = entry
            source[entry["fullname"]] = run.record.commit
    newest = runs[-1].record
    return {"machine_info": newest.details["machine_info"], "commit_info": newest.details["commit_info"],
            "benchmarks": [latest[name] for name in sorted(latest)],
            "datetime": newest.recorded_at.isoformat(), "version": newest.details.get("pytest_benchmark"),
            "optcv": {"machine_key": machine.key, "machine": machine.label(), "branch": branch,
                      "runs": [r.id for r in runs], "commit_of_each_case": source}}


def storage_folder(machine_info: dict[str, Any]) -> str:
    """pytest-benchmark's folder for a run's platform (its get_machine_id, from the file's machine_info)."""
    version = ".".join(str(machine_info.get("python_version", "")).split(".")[:2])
    system, implementation = machine_info.get("system", "Linux"), machine_info.get("python_implementation", "CPython")
    return f"{system}-{implementation}-{version}-64bit"


def write_baseline(storage: Path, baseline: dict[str, Any]) -> Path:
    """Write (or replace) the machine's baseline file in `storage`, keeping its number if it has one."""
    folder = storage / storage_folder(baseline["machine_info"])
    name = f"{BASELINE_PREFIX}{baseline['optcv']['machine_key']}"
    existing = sorted(folder.glob(f"[0-9][0-9][0-9][0-9]_{name}.json"))
    if existing:
        path = existing[-1]
    else:
        numbers = [int(m.group(1)) for p in folder.glob("*.json") if (m := re.match(r"(\d{4})_", p.name))]
        path = folder / f"{max(numbers, default=0) + 1:04d}_{name}.json"
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(path, baseline)


def find_baseline(storage: Path, machine: Machine) -> Path | None:
    """The baseline file recorded for `machine` in `storage`, if any."""
    found = sorted(storage.glob(f"*/[0-9][0-9][0-9][0-9]_{baseline_name(machine)}.json"))
    return found[-1] if found else None
