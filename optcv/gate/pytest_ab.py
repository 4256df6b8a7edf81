"""The A/B gate of pytest-benchmark tests: each test that uses the `benchmark` fixture, timed in both revisions.

Every worker is a pytest session of its side (optcv.gate.sessions): it collects the same node ids
from its own tree, runs their fixtures, and serves its `benchmark` call's timed calls to this coordinator, which
times them with the gate's own engine (optcv.gate.timing.time_case: paired rounds, a random order per round, worker
pairs with shared layouts) and judges them by its rule (optcv.gate.verdict). The sides' rounds alternate within the
same test, never one session after the other. A test that fails or is undecided is timed again by fresh workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from optcv.gate.attribution import OUTSIDE, PROFILE_REPEATS
from optcv.gate.config import GateConfig
from optcv.gate.sessions import SessionPool, SessionSettings, node_files
from optcv.gate.sides import Side
from optcv.gate.timing import CaseSamples, judge_samples, profile_case, time_case
from optcv.gate.verdict import CaseFinding, Thresholds
from optcv.gate.worker.protocol import SideReport


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


def rounds_us(samples: CaseSamples, label: str) -> tuple[float, ...]:
    return tuple(float(v) for pair in (samples.base_us if label == "base" else samples.head_us) for v in pair)


def time_test(pool: SessionPool, node: str, config: GateConfig, thresholds: Thresholds, attempt: int,
              earlier: CaseSamples | None = None) -> tuple[CaseFinding, CaseSamples]:
    """The node timed A/B by every session of the pool (all of them ready at its benchmark call) and judged."""
    rng = np.random.default_rng([config.seed, attempt, sum(node.encode())])
    samples = time_case(pool.workers, node, config, rng)
    return judge_samples(samples, earlier, thresholds.for_case(node), config.seed), samples


def profile_test(pool: SessionPool, node: str, finding: CaseFinding, config: GateConfig) -> dict[str, Any] | None:
    """A failing test's per-operator changes (optcv.gate.attribution), where its callable runs PyTorch operators;
    None where it runs none (no operator to name: its whole change is outside)."""
    calls = max(3, int(config.profile_ms * 1000 / PROFILE_REPEATS / max(finding.base_median_us, 1.0)))
    rng = np.random.default_rng([config.seed, 36])
    profile = profile_case(pool.workers, node, min(calls, 2000), rng, seed=config.seed)
    return profile if any(c["operator"] != OUTSIDE for c in profile["changes"]) else None


class PytestGate:
    """The gate of one pytest run: a pool of both sides' sessions over the run's benchmark tests, asked test by
    test in the main session's order (`run`), with a fresh pool for each re-test."""

    def __init__(self, base: Side, head: Side, nodes: Sequence[str], config: GateConfig, thresholds: Thresholds,
                 workdir: Path, session: SessionSettings = SessionSettings()):
        self.sides = (base, head)
        self.session = session  # every session's arguments and environment; the head's self-test slowdown
        self.nodes, self.config, self.thresholds, self.workdir = list(nodes), config, thresholds, workdir
        self.pool: SessionPool | None = None
        self.gone: list[str] = []
        self.base_errors: dict[str, str] = {}

    def start(self) -> None:
        files = node_files(self.nodes)  # none where only the plugin's cases of declared models are timed
        if not files or any((self.sides[0].tree / f).exists() for f in files):
            self.pool = SessionPool(self.sides, self.nodes, self.config, self.workdir, self.session)
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
        pool = SessionPool(self.sides[::-1], [node], self.config, self.workdir, self.session, attempt=1)
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
                gone: Sequence[str], same_code: str | None = None) -> dict[str, Any]:
    from optcv.env import environment_info

    return {"schema": PYTEST_GATE_SCHEMA, "against": against,
            "sides": {s.label: s.describe() for s in sides} if sides else None,
            "tests": [outcome_to_dict(o) for o in outcomes], "gone_from_head": list(gone),
            "same_code": same_code, "environment": environment_info()}
