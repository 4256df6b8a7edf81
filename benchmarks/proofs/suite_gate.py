"""Issue 36's proof on optcv's own suite: in a throwaway clone of this repository at HEAD, a commit that makes ONNX
Runtime's `predict` copy its input three times; `pytest benchmarks/test_latency.py --gate-against HEAD~1` (the
pull-request tier's default selection, 18 tests) must fail the cases that change costs beyond their threshold and
pass the rest. Unchanged runs (`--gate-against HEAD --gate-even-if-unchanged`) are interleaved with them.

    python benchmarks/proofs/suite_gate.py --runs 3 --out benchmarks/proofs/records/suite-gate-copies-amd-DATE

What three copies cost (the nominal change) is measured apart, in a process with the gate's malloc settings and
in one without them. Each run's gate JSON goes to OUT/<change>-<run>.json, its exit and wall time to OUT/runs.json
(a re-run goes on from there). Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from interleaved import run_interleaved  # noqa: E402  (this folder, first on sys.path when the script runs)

from optcv._io import write_json  # noqa: E402
from optcv.gate.sides import MALLOC_ENV  # noqa: E402

PREDICT = "        images = check_input(images, self.input_spec)\n"
COPIES = PREDICT + "        images = images.copy()\n" * 3
CHANGES = ("three-copies", "unchanged")
COPY_COST = """
import json, timeit
import numpy as np
out = {}
for batch in (1, 64):
    x = np.zeros((batch, 3, 32, 32), np.uint8)
    n = 20000 if batch == 1 else 2000
    runs = sorted(timeit.repeat(lambda: x.copy().copy().copy(), number=n, repeat=9))
    out[batch] = runs[4] / n * 1e6
print(json.dumps(out))
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=proof", "-c", "user.email=proof@localhost",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def clone_with_copies(repo: Path) -> None:
    """This repository's HEAD, and a branch `copies` on it whose ONNX Runtime predict copies its input thrice."""
    git(ROOT, "worktree", "prune")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    git(repo, "checkout", "-q", "-B", "main", git(ROOT, "rev-parse", "HEAD"))
    runtime = repo / "optcv" / "backends" / "onnxruntime.py"
    text = runtime.read_text()
    assert text.count(PREDICT) == 1, "ONNX Runtime's predict changed: update this proof"
    git(repo, "checkout", "-q", "-b", "copies")
    runtime.write_text(text.replace(PREDICT, COPIES))
    git(repo, "commit", "-q", "-am", "ONNX Runtime's predict copies its input three times")
    git(repo, "checkout", "-q", "main")


def copy_cost() -> dict[str, dict[str, float]]:
    """Three copies of a batch-1 and a batch-64 input, in µs (the median of 9), with and without the gate's malloc
    settings (optcv.gate.sides.MALLOC_ENV)."""
    found = {}
    for label, extra in (("gate's malloc settings", MALLOC_ENV), ("glibc's defaults", {})):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
        done = subprocess.run([sys.executable, "-c", COPY_COST], env=env, capture_output=True, text=True, check=True)
        found[label] = json.loads(done.stdout)
    return found


def one_run(repo: Path, change: str, index: int, out: Path) -> dict:
    path = out / f"{change}-{index:02d}.json"
    git(repo, "checkout", "-q", "copies" if change == "three-copies" else "main")
    against = ["--gate-against", "HEAD~1"] if change == "three-copies" else ["--gate-against", "HEAD",
                                                                             "--gate-even-if-unchanged"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_latency.py", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "-q", *against, "--gate-json", str(path)], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)
    (out / f"{change}-{index:02d}.log").write_text(done.stdout[-20000:] + done.stderr[-5000:])
    return {"exit": done.returncode, "wall_s": round(time.perf_counter() - started, 1), "json": path.name}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    repo = Path(f"/tmp/optcv-suite-gate-{os.getpid()}")
    clone_with_copies(repo)
    try:
        if not (args.out / "suite.json").is_file():
            write_json(args.out / "suite.json", {"head": git(ROOT, "rev-parse", "HEAD"), "change": COPIES,
                                                 "copy_cost_us": copy_cost()})
        record = run_interleaved(args.out / "runs.json", "runs", "change", CHANGES, args.runs,
                                 lambda change, index: one_run(repo, change, index, args.out),
                                 lambda run: f"{run['change']} #{run['index'] + 1}: exit {run['exit']} in "
                                             f"{run['wall_s']} s")
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    print(f"{len(record['runs'])} runs recorded in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
