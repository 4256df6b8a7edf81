"""Issue 36's proof on a repository with no model in it: `pytest --gate-against HEAD` over three ordinary
pytest-benchmark tests (tests/test_pytest_gate.py's), with the head's timed calls slowed by each level
(`--gate-slowdown`), RUNS times a level, the levels interleaved; per test and level, how often the gate failed it,
and on unchanged code how often each interval held zero.

    python benchmarks/proofs/pytest_gate_boundary.py --levels 0 1.5 5 --runs 10 --out /tmp/pytest-gate

Each run's gate JSON goes to OUT/<level>-<run>.json and its exit and wall time to OUT/runs.json (a re-run goes on
from there). Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from interleaved import run_interleaved  # noqa: E402  (this folder, first on sys.path when the script runs)
from render import pytest_boundary_table as table  # noqa: E402

from tests.test_pytest_gate import plain_repository  # noqa: E402


def one_run(repo: Path, level: float, index: int, out: Path) -> dict:
    path = out / f"{level:g}-{index:02d}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--gate-against", "HEAD",
                           "--gate-slowdown", str(level), "--gate-json", str(path)], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)
    return {"exit": done.returncode, "wall_s": round(time.perf_counter() - started, 1), "json": path.name}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 1.5, 5.0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    repo = args.out / "repo"
    if not repo.exists():
        plain_repository(repo)
    record = run_interleaved(args.out / "runs.json", "runs", "level", args.levels, args.runs,
                             lambda level, index: one_run(repo, level, index, args.out),
                             lambda run: f"{run['level']:g} % #{run['index'] + 1}: exit {run['exit']} in "
                                         f"{run['wall_s']} s")
    walls = sorted(r["wall_s"] for r in record["runs"])
    print(f"{len(record['runs'])} runs, {record['environment'].get('cpu')}, wall {walls[0]}–{walls[-1]} s\n")
    print("\n".join(table(args.out, record["runs"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
