"""The A/B gate of pytest-benchmark tests: each test that uses the `benchmark` fixture, timed in both revisions.

Every worker is a pytest session of its side (optcv/gate/worker/pytest_session.py): it collects the same node ids
from its own tree, runs their fixtures, and serves its `benchmark` call's timed calls to this coordinator, which
times them with the gate's own engine (optcv.gate.timing.time_case: paired rounds, a random order per round, worker
pairs with shared layouts) and judges them by its rule (optcv.gate.verdict). The sides' rounds alternate within the
same test, never one session after the other. A test that fails or is undecided is timed again by fresh workers.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from optcv.errors import GateSetupError
from optcv.gate.attribution import OUTSIDE, PROFILE_REPEATS
from optcv.gate.config import GateConfig
from optcv.gate.sides import Side, pair_tree
from optcv.gate.timing import CaseSamples, judge_samples, profile_case, time_case
from optcv.gate.verdict import CaseFinding, Thresholds
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
SESSION_ARGS = ("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly", "-p", "no:optcv", "-o", "addopts=",
                "--continue-on-collection-errors", "-q", "--no-header", "-rN")
EVENT_TIMEOUT_S = 900.0  # one test's fixtures on one side, or one answer: a hung worker fails the gate, not CI


class Unpaired(str, Enum):
    """Why a test was not compared: said in the summary and the JSON, never guessed."""
    NEW_IN_HEAD = "new in the head: the base revision has no such test"
    GONE_FROM_HEAD = "gone from the head: only the base revision has it"
    BASE_DOES_NOT_COLLECT = "the base revision's test file does not collect"
    FAILS_ON_BASE = "fails on the base"
    SKIPPED_ON_BASE = "skipped on the base"
    FAILS_ON_HEAD = "fails on the head"
    SKIPPED_ON_HEAD = "skipped on the head"
    NO_BENCHMARK_CALL = "never calls its benchmark fixture"


SIDE_OUTCOMES = {("head", "failed"): Unpaired.FAILS_ON_HEAD, ("head", "skipped"): Unpaired.SKIPPED_ON_HEAD,
                 ("base", "failed"): Unpaired.FAILS_ON_BASE, ("base", "skipped"): Unpaired.SKIPPED_ON_BASE}


@dataclass(frozen=True)
class GatedTest:
    """What the gate found for one test: a finding, or why there is none, and the head side's own result."""
    node: str
    finding: CaseFinding | None = None
    first_pass: CaseFinding | None = None  # the first pass's finding when the test was timed again
    unpaired: Unpaired | None = None
    detail: str = ""  # the side's own words: a failure's or a skip's last line
    head_failure: str | None = None  # the test's assertions failed on the head side
    head_skip: str | None = None
    fixtures_differ: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (base's, head's)
    head_rounds_us: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return outcome_to_dict(self)


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
                  pad: int, hash_seed: int, slowdown_pct: float = 0.0) -> SessionWorker:
    worker_reads, coordinator_writes = os.pipe()
    coordinator_reads, worker_writes = os.pipe()
    log_path = workdir / f"{side.label}-pytest-{index}.log"
    env = {**side.env(pad, hash_seed), "OPTCV_GATE_FDS": f"{worker_reads},{worker_writes}",
           "OPTCV_GATE_NODES": str(nodes_file), "OPTCV_GATE_SLOWDOWN_PCT": str(slowdown_pct)}
    with open(log_path, "w") as log:
        process = subprocess.Popen([side.python, str(SESSION_SCRIPT), *SESSION_ARGS, *files], cwd=side.tree,
                                   env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   pass_fds=(worker_reads, worker_writes), preexec_fn=worker_start)
    os.close(worker_reads)
    os.close(worker_writes)
    return SessionWorker(side, pair, process, coordinator_reads, coordinator_writes, log_path)


class SessionPool:
    """`per_side` pytest sessions per side running `nodes` in order, started in the pairs' ABBA order with a
    layout (padding, hash seed) per pair shared by its two sessions and, as the gate's workers have, trees of
    the pair's own (optcv.gate.workers)."""

    def __init__(self, sides: Sequence[Side], nodes: Sequence[str], config: GateConfig, workdir: Path,
                 attempt: int = 0, slowdown_pct: float = 0.0):
        self.nodes = list(nodes)
        nodes_file = workdir / f"nodes-{attempt}.txt"
        nodes_file.write_text("\n".join(self.nodes) + "\n", encoding="utf-8")
        per_side = config.workers_per_side
        pads, seeds = pair_layouts(len(sides) * per_side, per_side, attempt, config.seed, config.hash_seeds)
        files = node_files(self.nodes)
        self.workers: list[SessionWorker] = []
        try:
            for i, pair in enumerate(pair_orders(sides, per_side, "abba", attempt)):
                own = [pair_tree(side, f"{attempt}-{i}", workdir) for side in pair] if config.tree_per_pair else pair
                self.workers += [start_session(side, i, i + attempt * per_side, workdir, nodes_file,
                                               [f for f in files if (side.tree / f).exists()], pads[i], seeds[i],
                                               slowdown_pct if side.label == "head" else 0.0)
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
    return sorted({node.split("::")[0] for node in nodes})


def rounds_us(samples: CaseSamples, label: str) -> tuple[float, ...]:
    return tuple(float(v) for pair in (samples.base_us if label == "base" else samples.head_us) for v in pair)


def time_test(pool: SessionPool, node: str, config: GateConfig, thresholds: Thresholds, attempt: int,
              earlier: CaseSamples | None = None) -> tuple[CaseFinding, CaseSamples]:
    """The node timed A/B by every session of the pool (all of them ready at its benchmark call) and judged."""
    rng = np.random.default_rng([config.seed, attempt, sum(node.encode())])
    samples = time_case(pool.workers, node, config, rng)  # type: ignore[arg-type]
    return judge_samples(samples, earlier, thresholds.for_case(node), config.seed), samples


def profile_test(pool: SessionPool, node: str, finding: CaseFinding, config: GateConfig) -> dict[str, Any] | None:
    """A failing test's per-operator changes (optcv.gate.attribution), where its callable runs PyTorch operators;
    None where it runs none (no operator to name: its whole change is outside)."""
    calls = max(3, int(config.profile_ms * 1000 / PROFILE_REPEATS / max(finding.base_median_us, 1.0)))
    rng = np.random.default_rng([config.seed, 36])
    profile = profile_case(pool.workers, node, min(calls, 2000), rng, seed=config.seed)  # type: ignore[arg-type]
    return profile if any(c["operator"] != OUTSIDE for c in profile["changes"]) else None


class PytestGate:
    """The gate of one pytest run: a pool of both sides' sessions over the run's benchmark tests, asked test by
    test in the main session's order (`run`), with a fresh pool for each re-test."""

    def __init__(self, base: Side, head: Side, nodes: Sequence[str], config: GateConfig, thresholds: Thresholds,
                 workdir: Path, slowdown_pct: float = 0.0):
        self.sides = (base, head)
        self.slowdown_pct = slowdown_pct  # the self-test's: every head session's timed calls, slowed by this %
        self.nodes, self.config, self.thresholds, self.workdir = list(nodes), config, thresholds, workdir
        self.pool: SessionPool | None = None
        self.gone: list[str] = []
        self.base_errors: dict[str, str] = {}

    def start(self) -> None:
        if any((self.sides[0].tree / f).exists() for f in node_files(self.nodes)):
            self.pool = SessionPool(self.sides, self.nodes, self.config, self.workdir,
                                    slowdown_pct=self.slowdown_pct)
            base, head = (self.pool.side_workers(label)[0] for label in ("base", "head"))
            self.gone = sorted(set(base.others) - set(head.others) - set(head.collected))
            self.base_errors = base.errors

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def run(self, node: str) -> GatedTest:
        pool = self.pool
        base_has = pool is not None and node in pool.side_workers("base")[0].collected
        if pool is None or not base_has:
            if pool is not None:
                pool.release(node, [i for i, s in pool.wait(node).items() if s.ready])
            error = next((e for path, e in self.base_errors.items() if node.startswith(path)), None)
            return GatedTest(node, unpaired=Unpaired.BASE_DOES_NOT_COLLECT if error else Unpaired.NEW_IN_HEAD,
                               detail=error or "")
        states = pool.wait(node)
        ready = [i for i, s in states.items() if s.ready]
        if len(ready) < len(pool.workers):
            reports = {**{i: s.reports for i, s in states.items()}, **pool.release(node, ready)}
            return self._unpaired(node, reports)
        finding, samples = time_test(pool, node, self.config, self.thresholds, 0)
        first = None
        if self.config.retest_failures and (finding.failed or finding.undecided):
            first, finding, samples = finding, *self._retest(node, finding, samples)
        if finding.failed and self.config.profile_ms > 0:
            finding = replace(finding, profile=profile_test(pool, node, finding, self.config))
        reports = pool.release(node, ready)
        base_failure = self._failure(reports, "base")
        if base_failure:  # its timing stands, but a test that fails on the base compares nothing it vouches for
            return GatedTest(node, unpaired=Unpaired.FAILS_ON_BASE, detail=base_failure)
        return GatedTest(node, finding, first, head_failure=self._failure(reports, "head"),
                           fixtures_differ=self._fixtures_differ(node), head_rounds_us=rounds_us(samples, "head"))

    def _retest(self, node: str, finding: CaseFinding, samples: CaseSamples) -> tuple[CaseFinding, CaseSamples]:
        """A failing or undecided test timed again by fresh sessions (other layouts, the order mirrored) and judged
        on the pairs of both pools."""
        pool = SessionPool(self.sides[::-1], [node], self.config, self.workdir, attempt=1,
                           slowdown_pct=self.slowdown_pct)
        try:
            ready = [i for i, s in pool.wait(node).items() if s.ready]
            if len(ready) < len(pool.workers):
                pool.release(node, ready)
                return finding, samples
            again, more = time_test(pool, node, self.config, self.thresholds, 1,
                                    earlier=samples)
            pool.release(node, ready)
            return again, more
        finally:
            pool.close()

    def _unpaired(self, node: str, reports: dict[int, list[SideReport]]) -> GatedTest:
        """Why a test some session never reached its benchmark call in is not compared: the head's reason first."""
        assert self.pool is not None
        for label in ("head", "base"):
            for index, found in reports.items():
                for report in found:
                    kind = SIDE_OUTCOMES.get((label, report.outcome))
                    if kind and self.pool.workers[index].side.label == label:
                        return GatedTest(node, unpaired=kind, detail=report.message)
        return GatedTest(node, unpaired=Unpaired.NO_BENCHMARK_CALL)

    def _failure(self, reports: dict[int, list[SideReport]], label: str) -> str | None:
        assert self.pool is not None
        return next((r.message for i, found in reports.items() for r in found
                     if self.pool.workers[i].side.label == label and r.outcome == "failed"), None)

    def _fixtures_differ(self, node: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        assert self.pool is not None
        base, head = (tuple(self.pool.side_workers(label)[0].collected[node]) for label in ("base", "head"))
        return (base, head) if base != head else None


def outcome_to_dict(outcome: GatedTest) -> dict[str, Any]:
    finding = outcome.finding
    return {"node": outcome.node, "gated": finding is not None,
            "verdict": finding.verdict.value if finding else None,
            "unpaired": outcome.unpaired.name.lower() if outcome.unpaired else None,
            "unpaired_reason": outcome.unpaired.value if outcome.unpaired else None, "detail": outcome.detail,
            "finding": asdict(finding) if finding else None,
            "first_pass": asdict(outcome.first_pass) if outcome.first_pass else None,
            "head_failure": outcome.head_failure,
            "fixtures_differ": {"base": list(outcome.fixtures_differ[0]), "head": list(outcome.fixtures_differ[1])}
            if outcome.fixtures_differ else None}


PYTEST_GATE_SCHEMA = "optcv-pytest-gate/1"


def run_to_dict(against: str, sides: tuple[Side, Side] | None, outcomes: Sequence[GatedTest],
                gone: Sequence[str]) -> dict[str, Any]:
    from optcv.env import environment_info

    return {"schema": PYTEST_GATE_SCHEMA, "against": against,
            "sides": {s.label: s.describe() for s in sides} if sides else None,
            "tests": [outcome_to_dict(o) for o in outcomes], "gone_from_head": list(gone),
            "environment": environment_info()}
