"""Ctrl-C ends `tune` and `run` within seconds, at many moments of their work (the nightly sweep).

A timing, so it runs with the benchmarks, alone on the machine, one interruption at a time: the kill points in
tests/faults/ check what an interrupt leaves behind on a loaded machine, this how long it takes. SQLite storage,
so Optuna's heartbeat thread runs during each trial; the sweep once found an interrupt that landed inside an Optuna
storage call and left SQLite locked for 60 s about once in 40 runs (held until the call ends since,
optcv._io.interrupts_deferred). The budget comes from measured exits (benchmarks/budgets.json).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.budgets import budget
from conftest import make_image_folder
from tests.faults.groups import left_behind, output, own_group
from tests.faults.test_kill_points import (
    COMMANDS,
    INTERRUPTED,
    SIGNAL_TIMEOUT,
    SWEEP_POINTS,
    KillPoint,
    Place,
    _reference,
    _start,
    _started,
    _wait_for,
)

pytestmark = pytest.mark.full
EXIT = budget("ctrl_c_exit_seconds")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("sweep-data"), train_per_class=20, test_per_class=10)


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    """Each command's work time, from its second uninterrupted run: the first also decodes the image folder."""
    def warm(name: str):
        _reference(name, data, tmp_path_factory.mktemp(f"first-{name}"))
        return _reference(name, data, tmp_path_factory.mktemp(f"reference-{name}"))

    return {name: warm(name) for name in sorted({p.command for p in SWEEP_POINTS})}


@pytest.mark.parametrize("point", SWEEP_POINTS, ids=[p.id for p in SWEEP_POINTS])
def test_ctrl_c_ends_the_command_within_its_budget(point: KillPoint, data, references, tmp_path):
    # A run faster than its reference (a shared machine) can be past its work at a late moment, where the finished
    # command ignores Ctrl-C while its interpreter shuts down (exit 0): that moment is tried once more, at half.
    for attempt, draw in enumerate((point.draw, point.draw / 2)):
        seconds, code, stderr, left = _interrupted(point, draw, data, references, tmp_path / f"try-{attempt}")
        if code is not None and code != 0:
            break
    print(f"{point.id}: exited {code} {seconds:.2f} s after Ctrl-C")
    assert code in INTERRUPTED and "interrupted" in stderr and "Traceback" not in stderr, (code, stderr)
    assert not left, left
    assert seconds <= EXIT.limit, f"{point.id}: {seconds:.2f} s after Ctrl-C, budget {EXIT.describe()}"


def _interrupted(point: KillPoint, draw: float, data: Path, references, folder: Path
                 ) -> tuple[float, int | None, str, list[str]]:
    """(seconds from Ctrl-C to the command's exit, its exit code or None if it finished before the moment, its
    standard error, the processes of its group it left behind)."""
    command, place = COMMANDS[point.command], Place(data, folder / "out", Path.cwd())
    with own_group(_start(command, place, {})) as process:
        _wait_for(_started(command, place), process)
        time.sleep(draw * references[point.command].work_seconds)
        if process.poll() is not None:
            return 0.0, None, output(process), []
        signalled = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole group
        try:
            process.wait(timeout=SIGNAL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{point.id}: still running {SIGNAL_TIMEOUT:.0f} s after Ctrl-C")
        seconds = time.monotonic() - signalled
        left = left_behind(process.pid)
    return seconds, process.returncode, output(process), left
