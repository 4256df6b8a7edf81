"""Process groups for the fault harness: a command started in a session of its own, its every process found by its
group, and nothing of it left running, whatever happened to the test.

A command is started with start_new_session, so its group id is its pid and every process it starts (tune's
workers, the gate's, valgrind) is in that group unless it leaves it on purpose. Its output goes to files, never to
pipes: a worker inherits the pipe, and a reader waiting for the pipe's end would wait for the worker, hiding one that
outlives its command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

END_SECONDS = 10.0  # for a group's processes to end once killed
# Once its command has ended, a process of its group still running after this is left behind: a gate's worker sees
# its stdin close at once, a tune worker is killed with its command (optcv.training.tune).
GRACE_SECONDS = 3.0


def group_members(pgid: int) -> list[str]:
    """The live processes of group `pgid` (zombies excluded): 'pid command line' each."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
            if int(group) != pgid or state == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # it ended while being read
        found.append(f"{entry.name} {command[:200]}")
    return found


def end_group(pgid: int) -> None:
    """SIGKILL to every process of the group, then wait (a bounded time) until none is left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + END_SECONDS
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def left_behind(pgid: int, grace: float = GRACE_SECONDS) -> list[str]:
    """The processes of a group whose command has ended that are still running after `grace` seconds (a worker that
    outlives its command); they are then killed."""
    deadline = time.monotonic() + grace
    while (alive := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive:
        end_group(pgid)
    return alive


def start(argv: list[str], logs: Path, **popen: Any) -> subprocess.Popen:
    """`argv` in a session of its own, its output in `logs`/stdout.log and `logs`/stderr.log."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout.log", "wb") as out, open(logs / "stderr.log", "wb") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True, **popen)
    process.logs = logs  # type: ignore[attr-defined]
    return process


def output(process: subprocess.Popen, stream: str = "stderr") -> str:
    return (process.logs / f"{stream}.log").read_text(errors="replace")  # type: ignore[attr-defined]


@contextmanager
def own_group(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Whatever happens inside (a time-out, a failed assertion, an interrupt of the test), the command's whole group
    is gone afterwards and its pipes are drained."""
    try:
        yield process
    finally:
        if process.poll() is None or group_members(process.pid):
            end_group(process.pid)
        try:
            process.wait(timeout=END_SECONDS)
        except subprocess.TimeoutExpired:
            pass
