"""The fault-injection suite: every case records what it found, and the session ends with one line counted
from those records — `faults: N bad inputs, M kill points, T tracebacks, L lost results`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pytest

TALLY_PROPERTY = "optcv_fault_tally"


@dataclass
class FaultTally:
    bad_inputs: int = 0
    kill_points: int = 0
    tracebacks: list[str] = field(default_factory=list)
    lost_results: list[str] = field(default_factory=list)

    def add(self, other: dict) -> None:
        self.bad_inputs += other["bad_inputs"]
        self.kill_points += other["kill_points"]
        self.tracebacks += other["tracebacks"]
        self.lost_results += other["lost_results"]

    def line(self) -> str:
        return (f"faults: {self.bad_inputs} bad inputs, {self.kill_points} kill points, "
                f"{len(self.tracebacks)} tracebacks, {len(self.lost_results)} lost results")


@pytest.fixture
def fault_tally(request: pytest.FixtureRequest) -> FaultTally:
    """What this case found; it travels with the case's report (so the count holds under pytest-xdist too)."""
    tally = request.node._optcv_fault_tally = FaultTally()
    return tally


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    tally = getattr(item, "_optcv_fault_tally", None)
    if tally is not None and report.when == "call":
        report.user_properties.append((TALLY_PROPERTY, asdict(tally)))
    return report


def fault_summary(terminalreporter) -> None:
    """The line counts only cases that ran; fault cases that failed, errored or were skipped are said beside it.
    Called from the root conftest: under pytest-xdist the controller never loads this file."""
    tally = FaultTally()
    for kind in ("passed", "failed"):
        for report in terminalreporter.stats.get(kind, []):
            for name, value in getattr(report, "user_properties", []):
                if name == TALLY_PROPERTY:
                    tally.add(value)
    missing = _not_passed(terminalreporter)
    if not (tally.bad_inputs or tally.kill_points or missing):
        return
    terminalreporter.write_line(tally.line() + (f"; {missing} fault cases failed, errored or were skipped (above)"
                                                if missing else ""))
    for what in (*tally.tracebacks, *tally.lost_results):
        terminalreporter.write_line(f"  {what}")


def _not_passed(terminalreporter) -> int:
    return sum(1 for kind in ("failed", "error", "skipped") for report in terminalreporter.stats.get(kind, [])
               if "tests/faults/" in getattr(report, "nodeid", ""))
