"""Issue 21's bisect proof: in a temporary repository of 16 commits after a good one, where the 8th adds a real
slowdown on the timed path (a 1x1 convolution of 64 to 96 channels at 16x16: +8 % of the network's
multiply-accumulates) and the others change a comment in the model's file or only the README, `optcv bisect`
must name that commit; in the same history without the slowdown it must say that no commit is slower.

    python benchmarks/proofs/bisect_proof.py --trials 10 --out /tmp/bisect-proof

Each trial is a fresh bisect (its own history database); the trials' results are kept in OUT/record.json, and
a re-run goes on from there. Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

NETS = '''\
import torch
from torch import nn


class ProofNet(nn.Module):
    def __init__(self, classes=10, slower=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.extra = nn.Conv2d(64, 96, 1) if slower else None
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        if self.extra is not None:
            x = x + self.extra(x)[:, :64]
        return self.head(x.mean((2, 3)))


def build(classes=10):
    torch.manual_seed(0)
    return ProofNet(classes, slower=SLOWER)


SLOWER = False
'''
DECLARATIONS = '''\
[project]
name = "proof-app"

[tool.optcv.models.proofnet]
factory = "proofnets.nets:build"
input = { shape = [3, 32, 32], mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }
backends = ["onnxruntime"]
batch_sizes = [1]
'''
COMMITS, SLOW_AT = 16, 8
CASE = "proofnet/onnxruntime/b1/t1"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=p", "-c", "user.email=p@p", *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, with_slowdown: bool) -> list[str]:
    """The good commit, then COMMITS more; with_slowdown: commit SLOW_AT turns the extra convolution on."""
    (root / "proofnets").mkdir(parents=True)
    (root / "proofnets" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(DECLARATIONS)
    nets = root / "proofnets" / "nets.py"
    nets.write_text(NETS)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "good")
    commits = [git(root, "rev-parse", "HEAD")]
    slower = False
    for i in range(1, COMMITS + 1):
        if with_slowdown and i == SLOW_AT:
            slower = True
            message = "refine the features with a 1x1 convolution"
        elif i % 2:
            message = f"comment {i}"
        else:
            (root / "README.md").write_text(f"# proof app, revision {i}\n")
            message = f"readme {i}"
        if i % 2 or i == SLOW_AT:
            nets.write_text(NETS.replace("SLOWER = False", f"SLOWER = {slower}") + f"# revision {i}\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", message)
        commits.append(git(root, "rev-parse", "HEAD"))
    return commits


def trial(out: Path, name: str, with_slowdown: bool) -> dict:
    repo = out / name / "repo"
    commits = make_repo(repo, with_slowdown)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "optcv", "bisect", "--good", commits[0], "--bad", "main",
                           "--models", "proofnet", "--case", CASE, "--history", str(out / name / "history.sqlite"),
                           "--json", str(out / name / "bisect.json"), "--quiet"],
                          cwd=repo, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    result = json.loads((out / name / "bisect.json").read_text()) if (out / name / "bisect.json").exists() else None
    steps = result["steps"] if result else []
    timed = [s for s in steps if s["attempts"] > 0 and not s["reused_from"]]
    culprit = next((s for s in steps if result and s["commit"] == result["first_slower"]), None)
    return {"name": name, "with_slowdown": with_slowdown, "exit": done.returncode, "seconds": round(seconds, 1),
            "outcome": result["outcome"] if result else None,
            "right": (result is not None and result["first_slower"] == commits[SLOW_AT]) if with_slowdown
            else done.returncode == 2 and "no commit slower" in done.stderr,
            "timed_steps": len(timed), "timings": sum(s["attempts"] for s in timed),
            "culprit_change": culprit["finding"] if culprit and culprit["finding"] else None,
            "stderr_tail": done.stderr.strip().splitlines()[-1:] if done.returncode else []}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else []
    names = [(f"slow-{i}", True) for i in range(args.trials)] + [(f"none-{i}", False) for i in range(args.trials)]
    for name, slow in names:
        if any(r["name"] == name for r in record):
            continue
        result = trial(args.out, name, slow)
        record.append(result)
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(record_path)
        change = result["culprit_change"]
        print(f"{name}: {'right' if result['right'] else 'WRONG'} ({result['outcome']}, exit {result['exit']}), "
              f"{result['timed_steps']} timed steps, {result['timings']} timings, {result['seconds']} s"
              + (f", {change['change_pct']:+.1f} % ({change['ci_low_pct']:+.1f} … {change['ci_high_pct']:+.1f})"
                 if change else ""), flush=True)
    for slow in (True, False):
        rows = [r for r in record if r["with_slowdown"] is slow]
        if rows:
            print(f"{'with' if slow else 'without'} the slowdown: right {sum(r['right'] for r in rows)}/{len(rows)}, "
                  f"timed steps mean {sum(r['timed_steps'] for r in rows) / len(rows):.1f}, timings mean "
                  f"{sum(r['timings'] for r in rows) / len(rows):.1f}, seconds "
                  f"{min(r['seconds'] for r in rows):.0f}–{max(r['seconds'] for r in rows):.0f}")


if __name__ == "__main__":
    main()
