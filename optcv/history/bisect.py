"""`optcv bisect`: the first commit between a good and a bad one that made a case slower, with the A/B gate as the
predicate: each candidate is timed against the good commit, side by side, in one run.

A candidate is **slower** when the gate's rule holds for some case (its interval excludes no change and its
change exceeds the threshold), **not slower** when every case's interval lies below the threshold, and otherwise
**inconclusive**: it is timed again with twice the rounds, and if it stays inconclusive the search stops and says
so, with the range it had narrowed to, rather than guess. A candidate whose timed code (optcv's source and
pyproject.toml, or the files a user's declared models are made of) equals an already-judged commit's takes that
verdict without timing. Every timing is kept in the history, which is also how an interrupted bisect resumes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

from optcv._io import work_folder
from optcv.data import default_cache_dir
from optcv.errors import OptcvError
from optcv.gate.compare import Log, measure
from optcv.gate.config import GateConfig
from optcv.gate.revisions import git, resolve_revision, revision_tree
from optcv.gate.sides import HEAD_TREE, SUBJECT_SUFFIXES, Side
from optcv.gate.verdict import CaseFinding, GateResult, Thresholds, Verdict
from optcv.history.ingest import current_machine_environment, record_of, this_machine
from optcv.history.records import BISECT
from optcv.history.store import HistoryStore, history_exists

BISECT_SCHEMA = "optcv-bisect/1"
RETRIES = 1  # re-timings of an inconclusive candidate, each with twice the rounds of the one before


class StepVerdict(str, Enum):
    SLOWER = "slower"
    NOT_SLOWER = "not slower"
    INCONCLUSIVE = "inconclusive"


class Outcome(str, Enum):
    FOUND = "found"
    INCONCLUSIVE = "inconclusive"
    BAD_NOT_SLOWER = "bad is not slower"


@dataclass(frozen=True)
class Judgement:
    """What timing one candidate showed: its verdict and the case that decided it."""

    verdict: StepVerdict
    finding: CaseFinding | None
    attempts: int = 1
    run_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class BisectStep:
    commit: str
    judgement: Judgement
    reused_from: str | None = None  # the commit with the same timed code whose verdict this step took


@dataclass(frozen=True)
class BisectResult:
    good: str
    bad: str
    candidates: tuple[str, ...]  # oldest first; the bad commit last
    outcome: Outcome
    steps: tuple[BisectStep, ...]
    last_not_slower: str  # the range the search narrowed to: (last_not_slower, first_slower]
    first_slower: str | None
    cases: tuple[str, ...] = ()
    threshold_pct: float | None = None
    subjects: dict[str, str] = field(default_factory=dict)  # commit → its message's first line

    def to_dict(self) -> dict[str, Any]:
        def step(s: BisectStep) -> dict[str, Any]:
            f = s.judgement.finding
            return {"commit": s.commit, "verdict": s.judgement.verdict.value, "attempts": s.judgement.attempts,
                    "reused_from": s.reused_from, "history_runs": list(s.judgement.run_ids),
                    "finding": {**asdict(f), "verdict": f.verdict.value, "profile": None} if f else None}

        return {"schema": BISECT_SCHEMA, "good": self.good, "bad": self.bad, "candidates": list(self.candidates),
                "outcome": self.outcome.value, "first_slower": self.first_slower if self.outcome is Outcome.FOUND
                else None, "range": [self.last_not_slower, self.first_slower], "cases": list(self.cases),
                "threshold_pct": self.threshold_pct, "steps": [step(s) for s in self.steps], "subjects": self.subjects}

    @property
    def culprit(self) -> BisectStep | None:
        if self.outcome is not Outcome.FOUND:
            return None
        return next(s for s in self.steps if s.commit == self.first_slower)


def verdict_of(findings: Sequence[CaseFinding]) -> tuple[StepVerdict, CaseFinding | None]:
    """Slower if any case is a regression by the gate's rule; not slower if every case's interval lies below its
    threshold; else inconclusive. The deciding case: the slower one, else the one nearest its threshold."""
    if not findings:
        return StepVerdict.INCONCLUSIVE, None
    slower = [f for f in findings if f.failed]
    if slower:
        return StepVerdict.SLOWER, max(slower, key=lambda f: f.change_pct - f.threshold_pct)
    nearest = max(findings, key=lambda f: f.ci_high_pct - f.threshold_pct)
    if all(f.ci_high_pct < f.threshold_pct for f in findings):
        return StepVerdict.NOT_SLOWER, nearest
    return StepVerdict.INCONCLUSIVE, nearest


def search(good: str, candidates: Sequence[str], judge: Callable[[str], Judgement], key_of: Callable[[str], str],
           log: Log = lambda _m: None) -> BisectResult:
    """Binary search for the first slower commit among `candidates` (oldest first, the bad commit last), `good`
    being not slower by definition. The bad commit is judged first: if it is not slower there is nothing to find."""
    judged: dict[str, tuple[str, Judgement]] = {key_of(good): (good, Judgement(StepVerdict.NOT_SLOWER, None, 0))}
    steps: list[BisectStep] = []

    def step(commit: str) -> StepVerdict:
        key = key_of(commit)
        if key in judged:
            origin, judgement = judged[key]
            steps.append(BisectStep(commit, judgement, reused_from=origin))
            log(f"{commit[:12]}: same timed code as {origin[:12]}: {judgement.verdict.value}")
        else:
            judgement = judge(commit)
            judged[key] = (commit, judgement)
            steps.append(BisectStep(commit, judgement))
            log(f"{commit[:12]}: {judgement.verdict.value}")
        return steps[-1].judgement.verdict

    low, high = -1, len(candidates) - 1
    first = step(candidates[high])
    if first is not StepVerdict.SLOWER:
        outcome = Outcome.BAD_NOT_SLOWER if first is StepVerdict.NOT_SLOWER else Outcome.INCONCLUSIVE
        return BisectResult(good, candidates[-1], tuple(candidates), outcome, tuple(steps), good, None)
    while high - low > 1:
        middle = (low + high) // 2
        verdict = step(candidates[middle])
        if verdict is StepVerdict.INCONCLUSIVE:
            return BisectResult(good, candidates[-1], tuple(candidates), Outcome.INCONCLUSIVE, tuple(steps),
                                candidates[low] if low >= 0 else good, candidates[high])
        if verdict is StepVerdict.SLOWER:
            high = middle
        else:
            low = middle
    return BisectResult(good, candidates[-1], tuple(candidates), Outcome.FOUND, tuple(steps),
                        candidates[low] if low >= 0 else good, candidates[high])


def candidates_between(repo: Path, good: str, bad: str) -> list[str]:
    """The commits after `good` up to and including `bad` on the path between them, oldest first."""
    if subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", good, bad]).returncode != 0:
        raise OptcvError(f"good commit {good[:12]} is not an ancestor of bad commit {bad[:12]}; give --good an older "
                         "commit on the bad one's history")
    listed = git(repo, "rev-list", "--reverse", "--ancestry-path", f"{good}..{bad}").split()
    if not listed:
        raise OptcvError("--good and --bad name the same commit: there is nothing between them to bisect")
    return listed


def timed_code_key(repo: Path, commit: str, subfolder: str, user_repository: bool) -> str:
    """What a commit's timing depends on, from git's object ids (no checkout): optcv's source and pyproject.toml,
    or in a user's repository the files its declared models can be made of."""
    prefix = f"{subfolder.strip('/')}/" if subfolder not in ("", ".") else ""
    names = git(repo, "ls-tree", "-r", commit, "--", prefix or ".").splitlines()
    digest = hashlib.sha256()
    for line in sorted(names):
        meta, path = line.split("\t", 1)
        relative = path[len(prefix):]
        wanted = (Path(relative).suffix in SUBJECT_SUFFIXES if user_repository
                  else relative.startswith("optcv/") and relative.endswith(".py") or relative == "pyproject.toml")
        if wanted:
            digest.update(f"{relative}\0{meta.split()[2]}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BisectSetup:
    repo: Path
    subfolder: str  # the folder inside the repository whose revisions are timed ("." for optcv's own)
    user_repository: bool
    config: GateConfig
    thresholds: Thresholds
    retries: int = RETRIES
    data_dir: str | Path | None = None
    history: str | Path | None = None  # None: the default location; "" would be no history
    record: bool = True


def run_bisect(setup: BisectSetup, good_rev: str, bad_rev: str, log: Log = lambda _m: None,
               progress: bool = False) -> BisectResult:
    repo = setup.repo
    good, bad = (_commit(repo, good_rev, "--good"), _commit(repo, bad_rev, "--bad"))
    candidates = candidates_between(repo, good, bad)
    log(f"bisecting {len(candidates)} commit(s) after {good[:12]} up to {bad[:12]}: about "
        f"{max(1, len(candidates)).bit_length()} timings, each against {good[:12]}")
    key_of = lambda commit: timed_code_key(repo, commit, setup.subfolder, setup.user_repository)  # noqa: E731
    earlier = _earlier_judgements(setup, good)
    with revision_tree(repo, good) as good_tree:
        base = Side("base", sys.executable, good_tree / setup.subfolder, revision=f"good ({good[:12]})",
                    harness=HEAD_TREE if setup.user_repository else None)

        def judge(commit: str) -> Judgement:
            key = key_of(commit)
            if key in earlier:
                log(f"{commit[:12]}: judged by an earlier bisect against {good[:12]} (the history)")
                return earlier[key]
            judgement, pending = _time_candidate(setup, base, good, commit, key, log, progress)
            if commit == bad and judgement.verdict is not StepVerdict.SLOWER:
                return judgement  # nothing to bisect (a bad input, or noise): the history keeps none of it
            return replace(judgement, run_ids=tuple(record() for record in pending) if setup.record else ())

        result = search(good, candidates, judge, key_of, log)
    logged = [git(repo, "log", "-1", "--format=%H %s", good), *git(repo, "log", "--format=%H %s", f"{good}..{bad}")
              .splitlines()]
    subjects = dict((line.split(" ", 1) + [""])[:2] for line in logged)
    return replace(result, cases=setup.config.cases, threshold_pct=setup.thresholds.default_pct, subjects=subjects)


def _time_candidate(setup: BisectSetup, base: Side, good: str, commit: str, key: str, log: Log,
                    progress: bool) -> tuple[Judgement, list[Callable[[], int]]]:
    """The candidate's judgement, and for each timing taken a call that records it in the history."""
    pending: list[Callable[[], int]] = []
    verdict, finding = StepVerdict.INCONCLUSIVE, None
    attempts = 0
    for attempt in range(setup.retries + 1):
        attempts += 1
        scale = 2 ** attempt
        config = replace(setup.config, case_seconds=setup.config.case_seconds * scale,
                         max_case_seconds=setup.config.max_case_seconds * scale,
                         min_rounds=setup.config.min_rounds * scale)
        log(f"{commit[:12]}: timing against {good[:12]}" + (f" again, with {scale}x the rounds" if attempt else ""))
        with revision_tree(setup.repo, commit) as tree, work_folder("optcv-bisect-") as work:
            head = Side("head", sys.executable, tree / setup.subfolder, revision=f"candidate ({commit[:12]})",
                        harness=base.harness)
            result = measure(base, head, config, setup.thresholds, data_dir=setup.data_dir,
                             cache_dir=default_cache_dir(), workdir=Path(work), log=log, progress=progress)
        verdict, finding = verdict_of(result.findings)
        pending.append(partial(_record, setup, result, good, commit, key, verdict, finding, attempt))
        if verdict is not StepVerdict.INCONCLUSIVE:
            break
    return Judgement(verdict, finding, attempts), pending


def _record(setup: BisectSetup, result: GateResult, good: str, commit: str, key: str, verdict: StepVerdict,
            finding: CaseFinding | None, attempt: int) -> int:
    data = {**result.to_dict(), "environment": current_machine_environment(result.environment)}
    record = record_of(data, source="optcv bisect", commit=commit)
    deciding = {**asdict(finding), "verdict": finding.verdict.value, "profile": None} if finding else None
    record = replace(record, kind=BISECT, details={**record.details, "bisect": {
        "good": good, "key": key, "verdict": verdict.value, "attempt": attempt, "cases": list(setup.config.cases),
        "threshold_pct": setup.thresholds.default_pct, "subfolder": setup.subfolder, "finding": deciding}})
    with HistoryStore(setup.history) as store:
        return store.add(record)


def _earlier_judgements(setup: BisectSetup, good: str) -> dict[str, Judgement]:
    """Verdicts an earlier (interrupted) bisect against the same good commit, cases and threshold reached on this
    machine: by timed-code key, the last decisive one."""
    if not setup.record or not history_exists(setup.history):
        return {}
    here = this_machine()
    found: dict[str, Judgement] = {}
    with HistoryStore(setup.history) as store:
        for run in store.runs(kind=BISECT):
            info: dict[str, Any] = run.record.details.get("bisect", {})
            same = (info.get("good") == good and info.get("cases") == list(setup.config.cases)
                    and info.get("threshold_pct") == setup.thresholds.default_pct
                    and info.get("subfolder") == setup.subfolder and run.record.machine == here)
            if same and info.get("verdict") != StepVerdict.INCONCLUSIVE.value:
                deciding = info.get("finding")
                finding = CaseFinding(**{**deciding, "verdict": Verdict(deciding["verdict"]),
                                         "pair_changes_pct": tuple(deciding["pair_changes_pct"])}) if deciding else None
                found[info["key"]] = Judgement(StepVerdict(info["verdict"]), finding, 0, (run.id,))
    return found


def _commit(repo: Path, revision: str, option: str) -> str:
    commit = resolve_revision(repo, revision)
    if commit is None:
        raise OptcvError(f"{option} {revision}: no such commit in {repo}; name a commit, branch or tag (a shallow "
                         "clone may need git fetch --unshallow)")
    return commit
