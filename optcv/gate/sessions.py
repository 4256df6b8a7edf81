"""Both sides' pytest sessions, the pytest gate's workers: each one a pytest session of its side's tree
(optcv/gate/worker/pytest_session.py) that collects the named tests, runs their fixtures and, at a test's
`benchmark` call, serves the coordinator's timing requests over two pipes (optcv.gate.worker.protocol)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from optcv.errors import GateSetupError
from optcv.gate.config import GateConfig
from optcv.gate.sides import Side, pair_tree
from optcv.gate.worker.protocol import (
    AtBenchmark,
    Collected,
    Fatal,
    Finished,
    Profile,
    Profiled,
    Release,
    SessionEnd,
    SessionEvent,
    SideReport,
    Time,
    Timed,
    decode,
    encode,
)
from optcv.gate.workers import pair_layouts, pair_orders, worker_start

R = TypeVar("R", Timed, Profiled)
SESSION_SCRIPT = Path(__file__).resolve().parent / "worker" / "pytest_session.py"
# Each side's session runs the named tests and nothing of the user's command line: an `addopts` of theirs may
# start xdist workers or reorder tests, and a cache written into the base's tree is no part of it.
SESSION_ARGS = ("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly", "-o", "addopts=",
                "--continue-on-collection-errors", "-q", "--no-header", "-rN")
# The file part of the node ids that optcv's plugin gives a declared model's cases (optcv.plugin): no file of the
# side's tree. Only a session that times such cases loads the plugin (in optcv's own trees it is the side's own).
PLUGIN_FILE = "optcv"
EVENT_TIMEOUT_S = 900.0  # one test's fixtures on one side, or one answer: a hung worker fails the gate, not CI


@dataclass(frozen=True)
class SessionSettings:
    """What every session of a gate gets beyond its side: arguments before the tests' files, environment variables,
    and (the head's only) the self-test's slowdown of each timed sample in %."""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    slowdown_pct: float = 0.0


@dataclass(frozen=True)
class Gone:
    """A session's pipe closed: it ended (or died) without a word."""


@dataclass(frozen=True)
class SessionState:
    """Where a session is at a test: at its benchmark call (ready), or past it, with what it reported."""
    ready: bool
    reports: list[SideReport]


@dataclass
class SessionWorker:
    """One side's pytest session: the gate's worker interface (`ask`, `side`, `pair`) over two pipes."""
    side: Side
    pair: int
    process: subprocess.Popen
    read_fd: int
    write_fd: int
    log_path: Path
    buffer: bytes = b""
    collected: dict[str, list[str]] = field(default_factory=dict)  # node id -> its fixtures, in the run's order
    others: tuple[str, ...] = ()  # benchmark tests in the same files that the run left out
    errors: dict[str, str] = field(default_factory=dict)  # per file that did not collect, its error
    ended: bool = False

    def send(self, request: Time | Profile | Release) -> None:
        try:
            os.write(self.write_fd, (encode(request) + "\n").encode())
        except BrokenPipeError:
            pass  # the session has ended: the next event says why

    def event(self, timeout: float = EVENT_TIMEOUT_S) -> SessionEvent | Gone:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise GateSetupError(f"the {self.side.label} side's pytest session gave no answer in {timeout:.0f} s: "
                                     f"{self.tail()}")
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                self.ended = True
                return Gone()
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = decode(line)
        except ValueError as exc:
            where = f"the {self.side.label} side's pytest session"
            raise GateSetupError(f"{where} answered out of protocol: {exc}") from None
        if isinstance(message, Fatal):
            raise GateSetupError(f"the {self.side.label} side's pytest session: {message.message}")
        return message

    def ask(self, request: Time | Profile, expect: type[R]) -> R:
        """The gate's worker interface (optcv.gate.timing: time_case, profile_case), at a test's benchmark call."""
        self.send(request)
        answer = self.event()
        if not isinstance(answer, expect):
            raise GateSetupError(f"the {self.side.label} side's pytest session stopped serving: {self.tail()}")
        return answer

    def tail(self) -> str:
        lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else f"exit code {self.process.poll()}"

    def close(self) -> None:
        os.close(self.write_fd)  # the session's next read ends it, wherever it waits
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.read_fd)


def start_session(side: Side, pair: int, index: int, workdir: Path, nodes_file: Path, files: Sequence[str],
                  pad: int, hash_seed: int, settings: SessionSettings = SessionSettings(),
                  plugin: bool = False) -> SessionWorker:
    worker_reads, coordinator_writes = os.pipe()
    coordinator_reads, worker_writes = os.pipe()
    log_path = workdir / f"{side.label}-pytest-{index}.log"
    slowdown_pct = settings.slowdown_pct if side.label == "head" else 0.0
    env = {**side.env(pad, hash_seed), **dict(settings.env), "OPTCV_GATE_FDS": f"{worker_reads},{worker_writes}",
           "OPTCV_GATE_NODES": str(nodes_file), "OPTCV_GATE_SLOWDOWN_PCT": str(slowdown_pct)}
    with open(log_path, "w") as log:
        command = [side.python, str(SESSION_SCRIPT), *session_args(plugin), *settings.args,
                   *(files or ["--ignore-glob=*"])]  # the plugin's cases alone: none of the side's own tests
        process = subprocess.Popen(command, cwd=side.tree, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, pass_fds=(worker_reads, worker_writes),
                                   preexec_fn=worker_start)
    os.close(worker_reads)
    os.close(worker_writes)
    return SessionWorker(side, pair, process, coordinator_reads, coordinator_writes, log_path)


class SessionPool:
    """`per_side` pytest sessions per side running `nodes` in order, started in the pairs' ABBA order with a
    layout (padding, hash seed) per pair shared by its two sessions and, as the gate's workers have, trees of
    the pair's own (optcv.gate.workers)."""

    def __init__(self, sides: Sequence[Side], nodes: Sequence[str], config: GateConfig, workdir: Path,
                 settings: SessionSettings = SessionSettings(), attempt: int = 0):
        self.nodes = list(nodes)
        nodes_file = workdir / f"nodes-{attempt}.txt"
        nodes_file.write_text("\n".join(self.nodes) + "\n", encoding="utf-8")
        per_side = config.workers_per_side
        pads, seeds = pair_layouts(len(sides) * per_side, per_side, attempt, config.seed, config.hash_seeds)
        files = node_files(self.nodes)
        plugin = any(node.split("::")[0] == PLUGIN_FILE for node in self.nodes)
        self.workers: list[SessionWorker] = []
        try:
            for i, pair in enumerate(pair_orders(sides, per_side, config.setup_order, attempt)):
                own = [pair_tree(side, f"{attempt}-{i}", workdir) for side in pair] if config.tree_per_pair else pair
                self.workers += [start_session(side, i, i + attempt * per_side, workdir, nodes_file,
                                               [f for f in files if (side.tree / f).exists()], pads[i], seeds[i],
                                               settings, plugin)
                                 for side in own]
            for worker in self.workers:
                self._read_collected(worker)
        except BaseException:
            self.close()
            raise

    def _read_collected(self, worker: SessionWorker) -> None:
        message = worker.event()
        if not isinstance(message, Collected):
            raise GateSetupError(f"the {worker.side.label} side's pytest session did not collect: {worker.tail()}")
        worker.collected, worker.others, worker.errors = message.nodes, message.others, message.errors

    def side_workers(self, label: str) -> list[SessionWorker]:
        return [w for w in self.workers if w.side.label == label]

    def wait(self, node: str) -> dict[int, SessionState]:
        """Every session that has `node` run up to its benchmark call (ready) or through its end without one;
        per worker index, what it reported. A session's earlier tests the coordinator passed over are let go."""
        states: dict[int, SessionState] = {}
        for index, worker in enumerate(self.workers):
            if node not in worker.collected:
                continue
            states[index] = self._advance(worker, node)
        return states

    def _advance(self, worker: SessionWorker, node: str) -> SessionState:
        reports: list[SideReport] = []
        while True:
            message = worker.event()
            if isinstance(message, Gone | SessionEnd):
                return SessionState(False, reports)
            if getattr(message, "node", None) != node:
                if isinstance(message, AtBenchmark):
                    worker.send(Release())  # a test this run passed over (deselected in the main session)
                continue
            if isinstance(message, AtBenchmark):
                return SessionState(True, reports)
            if isinstance(message, SideReport):
                reports.append(message)
            if isinstance(message, Finished):
                return SessionState(False, reports)

    def release(self, node: str, indices: Sequence[int]) -> dict[int, list[SideReport]]:
        """Let the ready sessions finish `node` (its assertions run on each side); per worker, its reports."""
        for index in indices:
            self.workers[index].send(Release())
        return {index: self._advance(self.workers[index], node).reports for index in indices}

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def node_files(nodes: Sequence[str]) -> list[str]:
    """The side's test files that hold `nodes` (the plugin's cases are in none)."""
    return sorted({node.split("::")[0] for node in nodes} - {PLUGIN_FILE})


def session_args(plugin: bool) -> list[str]:
    return [*SESSION_ARGS, *(() if plugin else ("-p", "no:optcv"))]


def plugin_node(case: str) -> str:
    """The node id of a declared model's latency case (`tiny/onnxruntime/b1/t1`), as optcv's plugin collects it."""
    return f"{PLUGIN_FILE}::test_optcv_latency[{case}]"


def declared_session_args(declarations: str, models: Sequence[str]) -> tuple[str, ...]:
    """What a session needs to collect the plugin's cases of a user's declared models: each side's models as its own
    tree's `declarations` (a path relative to the tree) declare them, as one side of a gate (optcv.plugin)."""
    return ("--optcv", "--optcv-declarations", declarations, "--optcv-models", *models, "--optcv-gate-side")
