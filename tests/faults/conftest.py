"""The fault-injection suite: every case records what it found, and the session ends with one line counted
from those records — `faults: N bad inputs, M kill points, T tracebacks, L lost results`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

TALLY_KEY = pytest.StashKey["FaultTally"]()


@dataclass
class FaultTally:
    bad_inputs: int = 0
    kill_points: int = 0
    tracebacks: list[str] = field(default_factory=list)
    lost_results: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"faults: {self.bad_inputs} bad inputs, {self.kill_points} kill points, "
                f"{len(self.tracebacks)} tracebacks, {len(self.lost_results)} lost results")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TALLY_KEY] = FaultTally()


@pytest.fixture(scope="session")
def fault_tally(request: pytest.FixtureRequest) -> FaultTally:
    return request.config.stash[TALLY_KEY]


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """The line counts only cases that ran; fault cases that failed, errored or were skipped are said beside it."""
    tally = config.stash.get(TALLY_KEY, None)
    if tally is None or not (tally.bad_inputs or tally.kill_points or _not_passed(terminalreporter)):
        return
    missing = _not_passed(terminalreporter)
    terminalreporter.write_line(tally.line() + (f"; {missing} fault cases failed, errored or were skipped (above)"
                                                if missing else ""))
    for what in (*tally.tracebacks, *tally.lost_results):
        terminalreporter.write_line(f"  {what}")


def _not_passed(terminalreporter) -> int:
    return sum(1 for kind in ("failed", "error", "skipped") for report in terminalreporter.stats.get(kind, [])
               if "tests/faults/" in getattr(report, "nodeid", ""))
