"""`optcv bisect` with real timings: in a user's repository of five commits, the one that made the forward
slower is found, the gate deciding each step, and every timing lands in the history.

The slowdown is large on purpose (thirty exp/log pairs on the activations, about +100 % here): this checks that the
search, the sides and the history work together on a real gate, not the gate's resolution, which
benchmarks/test_gate.py's self-test measures at its threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optcv.history.store import HistoryStore
from tests.user_repo import NETS, commit_history

ROOT = Path(__file__).resolve().parents[1]
SLOWER = NETS.replace("self.conv(x).relu()", "self.conv(x).relu()" + ".exp().log()" * 30)


@pytest.mark.full
def test_bisect_finds_the_commit_that_made_the_forward_slower(tmp_path):
    repo = tmp_path / "their-app"
    commits = commit_history(repo, SLOWER)
    history, out = tmp_path / "history.sqlite", tmp_path / "bisect.json"
    done = subprocess.run([sys.executable, "-m", "optcv", "bisect", "--good", commits[0], "--bad", "main",
                           "--models", "tiny", "--case", "tiny/pytorch/b1/t1", "--workers", "1", "--case-seconds", "1",
                           "--history", str(history), "--json", str(out), "--quiet"],
                          cwd=repo, capture_output=True, text=True, timeout=900)
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["outcome"] == "found" and result["first_slower"] == commits[2]
    timed = [s for s in result["steps"] if s["attempts"] > 0 and not s["reused_from"]]
    culprit = next(s for s in result["steps"] if s["commit"] == commits[2])
    assert culprit["verdict"] == "slower" and culprit["finding"]["change_pct"] > 3
    assert commits[1] not in [s["commit"] for s in timed]  # README only: the good commit's code, not timed
    with HistoryStore(history) as store:
        assert sorted(r.record.commit for r in store.runs(kind="bisect")) == sorted(s["commit"] for s in timed)
    assert f"first slower commit {commits[2][:12]}" in done.stdout
