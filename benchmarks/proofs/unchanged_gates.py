"""Issue 35's proof of honesty: N default gates on identical code (`optcv gate --against HEAD --even-if-unchanged`),
one after the other, each with its own seed, and per case how often its 95 % interval held zero.

    python benchmarks/proofs/unchanged_gates.py --gates 20 --out /tmp/unchanged

Each gate's JSON goes to OUT/gate-NN.json with its wall time in OUT/runs.json (a re-run goes on from there); then
the per-case table (the self-test's coverage table, optcv.report.gate.coverage_table) and the criteria: at least
93 % of the intervals hold zero, at most 3.5 % miss on either side, each case's median change within ±1 %, no gate
fails. Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from optcv._io import write_json
from optcv.env import environment_info
from optcv.gate.selftest import SelfTestResult, run_from_dict
from optcv.report.gate import coverage_table

HELD_AT_LEAST, MISSED_AT_MOST, MEDIAN_WITHIN_PCT = 0.93, 0.035, 1.0


def one_gate(index: int, out: Path, extra: list[str]) -> dict:
    path = out / f"gate-{index:02d}.json"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "optcv", "gate", "--against", "HEAD", "--even-if-unchanged",
                           "--seed", str(1000 + index), "--json", str(path), "--no-history", "--quiet", *extra],
                          check=False)
    return {"index": index, "exit": done.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "json": path.name}


def criteria(result: SelfTestResult, runs: list[dict]) -> list[tuple[str, bool]]:
    coverage = result.coverage()
    n = sum(c.runs for c in coverage)
    held, below, above = (sum(getattr(c, k) for c in coverage) for k in ("contain", "below", "above"))
    worst = max(coverage, key=lambda c: abs(c.median_change_pct))
    failed = [r["index"] for r in runs if r["exit"] != 0]
    return [(f"{held}/{n} intervals ({100 * held / n:.1f} %) hold zero (≥ {100 * HELD_AT_LEAST:g} %)",
             held >= HELD_AT_LEAST * n),
            (f"{below} below, {above} above zero (each ≤ {100 * MISSED_AT_MOST:g} % = {MISSED_AT_MOST * n:.1f})",
             max(below, above) <= MISSED_AT_MOST * n),
            (f"largest median change {worst.median_change_pct:+.2f} % ({worst.case}; within ±{MEDIAN_WITHIN_PCT:g} %)",
             abs(worst.median_change_pct) <= MEDIAN_WITHIN_PCT),
            (f"gates failed: {failed or 'none'} of {len(runs)}", not failed)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args, extra = parser.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "runs.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {
        "environment": environment_info(), "extra_args": extra, "runs": []}
    for index in range(len(record["runs"]), args.gates):
        record["runs"].append(one_gate(index, args.out, extra))
        write_json(record_path, record)
        print(f"gate {index + 1}/{args.gates}: exit {record['runs'][-1]['exit']} "
              f"in {record['runs'][-1]['wall_s']} s", flush=True)
    runs = [run_from_dict({**json.loads((args.out / r["json"]).read_text()), "injected_pct": {}, "seed": r["index"]})
            for r in record["runs"]]
    result = SelfTestResult(runs, (), {}, record["environment"])
    walls = sorted(r["wall_s"] for r in record["runs"])
    print(f"{len(runs)} unchanged gates, {record['environment'].get('cpu')}, "
          f"wall {walls[0]}–{walls[-1]} s (median {walls[len(walls) // 2]} s)\n")
    print(coverage_table(result.coverage()) + "\n")
    checks = criteria(result, record["runs"])
    for line, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
