"""`optcv bisect`: the search, its verdict rule at the threshold, reuse of equal code, re-timing, the history as
its memory. Timing is replaced by given findings here; the real gate finds a real slow commit in benchmarks/."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from optcv.cli import main
from optcv.env import cpu_model
from optcv.errors import OptcvError
from optcv.gate.config import GateConfig
from optcv.gate.verdict import GateResult, Thresholds, judge
from optcv.history import bisect as bisect_module
from optcv.history.bisect import (
    BisectSetup,
    Judgement,
    Outcome,
    StepVerdict,
    candidates_between,
    run_bisect,
    search,
    timed_code_key,
    verdict_of,
)
from optcv.history.store import HistoryStore
from optcv.report.bisect import bisect_markdown
from tests.history_data import fill_history
from tests.user_repo import NETS, commit_history


def finding(change_pct: float, spread_pct: float, threshold: float = 3.0, case: str = "tiny/pytorch/b1/t1"):
    """A gate finding whose change is `change_pct` with an interval about ±`spread_pct` (the gate's own judge)."""
    ratios = [1 + change_pct / 100 + spread_pct / 100 * d for d in (-1, -0.5, 0, 0.5, 1) * 4]
    return judge(case, [100.0] * 20, [100.0 * r for r in ratios], threshold, calls_per_turn=10)


def test_the_verdict_rule_at_the_threshold():
    slower = finding(3.6, 0.5)  # the gate's rule: interval above 0 and change above 3 %
    assert slower.failed and verdict_of([slower])[0] is StepVerdict.SLOWER
    straddling = finding(2.6, 2.0)  # not a regression, but its interval reaches past 3 %: undecided
    assert not straddling.failed and straddling.ci_high_pct > 3.0
    assert verdict_of([straddling])[0] is StepVerdict.INCONCLUSIVE
    unchanged = finding(0.0, 1.0)
    assert verdict_of([unchanged])[0] is StepVerdict.NOT_SLOWER
    assert verdict_of([unchanged, slower]) == (StepVerdict.SLOWER, slower)  # any slower case decides
    assert verdict_of([unchanged, straddling])[0] is StepVerdict.INCONCLUSIVE


def _fake(first_slower: int, inconclusive: set[int] = frozenset(), keys: dict[int, str] | None = None):
    commits = [f"{i:040x}" for i in range(1, 17)]
    calls: list[str] = []

    def judge_commit(commit: str) -> Judgement:
        calls.append(commit)
        index = commits.index(commit)
        if index in inconclusive:
            return Judgement(StepVerdict.INCONCLUSIVE, finding(2.6, 2.0))
        slow = index >= first_slower
        return Judgement(StepVerdict.SLOWER if slow else StepVerdict.NOT_SLOWER, finding(8.0 if slow else 0.0, 1.0))

    key_of = lambda c: (keys or {}).get(commits.index(c) if c in commits else -1, c)  # noqa: E731
    return commits, calls, judge_commit, key_of


@pytest.mark.parametrize("first_slower", [0, 5, 11, 15])
def test_the_search_finds_the_first_slower_commit_in_log2_steps(first_slower):
    commits, calls, judge_commit, key_of = _fake(first_slower)
    result = search("0" * 40, commits, judge_commit, key_of)
    assert result.outcome is Outcome.FOUND and result.first_slower == commits[first_slower]
    assert len(calls) <= 5  # the bad commit, then log2(16) = 4 halvings
    assert result.culprit is not None and result.culprit.judgement.finding.change_pct > 3


def test_commits_with_the_same_timed_code_share_a_verdict_without_timing():
    # Commits 0-3 change only files the timing cannot see (key of the good commit); 6 and 7 share a key.
    keys = {0: "good", 1: "good", 2: "good", 3: "good", 6: "k6", 7: "k6"}
    commits, calls, judge_commit, key_of = _fake(6, keys=keys)
    result = search("good-commit", commits, judge_commit, lambda c: "good" if c == "good-commit" else key_of(c))
    assert result.first_slower == commits[6]
    reused = [s for s in result.steps if s.reused_from]
    assert reused and all(s.commit not in calls for s in reused)


def test_an_inconclusive_step_ends_the_search_with_its_range_and_a_bad_commit_that_is_not_slower_says_so():
    commits, calls, judge_commit, key_of = _fake(11, inconclusive={7})
    result = search("0" * 40, commits, judge_commit, key_of)
    assert result.outcome is Outcome.INCONCLUSIVE and result.first_slower == commits[15]
    assert result.last_not_slower == "0" * 40  # nothing was shown not slower before the undecided step
    assert "inconclusive" in bisect_markdown(replace(result, cases=("*",), threshold_pct=3.0))
    commits, calls, judge_commit, key_of = _fake(99)
    result = search("0" * 40, commits, judge_commit, key_of)
    assert result.outcome is Outcome.BAD_NOT_SLOWER and calls == [commits[-1]]


def _history_of_commits(root: Path) -> tuple[Path, list[str]]:
    return root, commit_history(root, NETS.replace("self.conv(x).relu()", "self.conv(x).relu().exp().log()"))


def test_candidates_and_timed_code_keys_come_from_git(tmp_path):
    repo, commits = _history_of_commits(tmp_path / "repo")
    assert candidates_between(repo, commits[0], commits[4]) == commits[1:]
    keys = [timed_code_key(repo, c, ".", user_repository=True) for c in commits]
    assert keys[0] == keys[1] and keys[3] == keys[4] and len({keys[0], keys[2], keys[3]}) == 3
    with pytest.raises(OptcvError, match="is not an ancestor"):
        candidates_between(repo, commits[3], commits[1])


def _result_of(findings) -> GateResult:
    here = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "versions": {}}  # timed on this machine
    return GateResult({}, {}, list(findings), {}, here, 1.0)


def test_run_bisect_times_against_the_good_commit_retimes_once_and_resumes_from_the_history(tmp_path, monkeypatch):
    repo, commits = _history_of_commits(tmp_path / "repo")
    timed: list[tuple[str, float]] = []

    def fake_measure(base, head, config, thresholds, **_kwargs):
        assert base.revision.startswith("good") and (base.tree / "usernets").is_dir()
        nets = (head.tree / "usernets" / "nets.py").read_text()
        timed.append((head.revision, config.case_seconds))
        if "exp().log()" not in nets:
            return _result_of([finding(0.0, 1.0)])
        # The first timing of the slower forward straddles the threshold; twice the rounds settle it.
        first = sum(1 for r, _ in timed if r == head.revision) == 1
        return _result_of([finding(2.6, 2.0) if first else finding(9.0, 1.0)])

    monkeypatch.setattr(bisect_module, "measure", fake_measure)
    config = GateConfig(models=("tiny",), declarations="pyproject.toml", cases=("tiny/*",), case_seconds=1.0)
    setup = BisectSetup(repo, ".", True, config, Thresholds(), retries=1, history=tmp_path / "h.sqlite")
    result = run_bisect(setup, commits[0], "main")
    assert result.outcome is Outcome.FOUND and result.first_slower == commits[2]
    assert result.subjects[commits[2]] == "slower forward"
    culprit = result.culprit
    assert culprit.judgement.attempts == 2 and culprit.judgement.finding.change_pct > 3
    assert (f"candidate ({commits[2][:12]})", 2.0) in timed  # the re-timing had twice the rounds
    assert not any(commits[1][:12] in r for r, _ in timed)  # README only: the good commit's own code
    with HistoryStore(tmp_path / "h.sqlite") as store:
        runs = store.runs(kind="bisect")
    assert len(runs) == len(timed) and {r.record.commit for r in runs} <= set(commits)

    timed.clear()  # the same bisect again: every verdict comes from the history, nothing is timed
    again = run_bisect(setup, commits[0], "main")
    assert again.first_slower == commits[2] and timed == []
    assert "first slower commit " + commits[2][:12] in bisect_markdown(again)


def test_cli_bisect_refuses_bad_revisions_in_one_line(tmp_path, monkeypatch, capsys):
    repo, commits = _history_of_commits(tmp_path / "repo")
    monkeypatch.chdir(repo)
    assert main(["bisect", "--good", "nope", "--bad", "main", "--models", "tiny", "--no-history"]) == 2
    assert "--good nope: no such commit" in capsys.readouterr().err
    assert main(["bisect", "--good", commits[3], "--bad", commits[1], "--models", "tiny", "--no-history"]) == 2
    err = capsys.readouterr().err
    assert "is not an ancestor" in err and len(err.strip().splitlines()) == 1
    assert main(["bisect", "--good", "main", "--bad", "main", "--models", "tiny", "--no-history"]) == 2
    assert "nothing between them" in capsys.readouterr().err


def test_a_bad_commit_that_is_not_slower_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    repo, commits = _history_of_commits(tmp_path / "repo")
    monkeypatch.setattr(bisect_module, "measure", lambda *a, **k: _result_of([finding(0.2, 1.0)]))
    monkeypatch.chdir(repo)
    history = tmp_path / "h.sqlite"
    assert main(["bisect", "--good", commits[2], "--bad", "main", "--models", "tiny", "--history", str(history),
                 "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "no commit slower" in captured.err and "give an older --good" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "| not slower" in captured.out
    assert not history.exists()  # nothing to bisect: the history is not even made
    with HistoryStore(history) as store:
        fill_history(store, runs_per_machine=2)
    before = history.read_bytes()
    assert main(["bisect", "--good", commits[2], "--bad", "main", "--models", "tiny", "--history", str(history),
                 "--quiet"]) == 2
    assert history.read_bytes() == before  # an existing one is left as it was
