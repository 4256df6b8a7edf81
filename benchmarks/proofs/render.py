"""The documentation's proof pages, rendered from the committed records (benchmarks/proofs/records/NAME/): one
page per record in docs/results/proofs/, with its machine, date and versions, and an index. No figure is typed.

    python benchmarks/proofs/render.py           # write the pages
    python benchmarks/proofs/render.py --check   # exit 1, naming the pages, when one differs from its record

A record is recognised by what it holds: selftest.json (`optcv gate --self-test --json`), how-fast.json (`optcv
how-fast`), runs.json with gate-NN.json (unchanged_gates.py), runs.json with a level per run
(pytest_gate_boundary.py), runs.json with suite.json (suite_gate.py), record.json (side_bias.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "benchmarks" / "proofs" / "records"
PAGES = ROOT / "docs" / "results" / "proofs"


def side_bias_summary(findings: list[dict[str, Any]]) -> dict[str, Any]:
    """Over unchanged case intervals: the mean change, how many read faster, and how many exclude zero each way."""
    changes = [f["change_pct"] for f in findings]
    return {"cases": len(findings), "mean_change_pct": round(statistics.fmean(changes), 2),
            "read_faster": sum(c < 0 for c in changes), "excluded_below": sum(f["ci_high_pct"] < 0 for f in findings),
            "excluded_above": sum(f["ci_low_pct"] > 0 for f in findings)}


def pytest_boundary_table(out: Path, runs: list[dict[str, Any]], key: str = "level") -> list[str]:
    """Per test and injected slowdown (or, with `key`, another arm): runs, failures, intervals that held zero, the
    median change."""
    lines = [f"| test | {'slowdown' if key == 'level' else key} | runs | failed | held zero | median change |",
             f"|---|{'---:' if key == 'level' else ':---'}|---:|---:|---:|---:|"]
    per: dict[tuple[str, Any], list[dict]] = {}
    for run in runs:
        for test in json.loads((out / run["json"]).read_text())["tests"]:
            per.setdefault((test["node"], run[key]), []).append(test)
    for (node, level), tests in sorted(per.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        found = [t["finding"] for t in tests if t["finding"]]
        failed = sum(t["verdict"] == "regression" for t in tests)
        held = sum(f["ci_low_pct"] <= 0 <= f["ci_high_pct"] for f in found)
        changes = sorted(f["change_pct"] for f in found)
        median = f"{changes[len(changes) // 2]:+.2f} %" if changes else "—"
        arm = f"{level:g} %" if key == "level" else str(level)
        lines.append(f"| {node.split('::')[-1]} | {arm} | {len(tests)} | {failed} | {held}/{len(found)} | "
                     f"{median} |")
    return lines


def _walls(runs: list[dict[str, Any]]) -> str:
    walls = sorted(r["wall_s"] for r in runs)
    return f"{walls[0]:g}–{walls[-1]:g} s a run (median {statistics.median(walls):g} s)"


def _self_test(folder: Path) -> tuple[str, dict[str, Any], list[str]]:
    from optcv.gate.selftest import SelfTestResult, run_from_dict
    from optcv.report.gate import self_test_markdown

    data = json.loads((folder / "selftest.json").read_text())
    result = SelfTestResult([run_from_dict(r) for r in data["runs"]], tuple(data["thresholds"]), data["config"],
                            data["environment"], data.get("notes", []))
    seconds = sorted(r.seconds for r in result.runs)
    # The report's own headings sit one level below its title; here the page's title is the record's name.
    body = self_test_markdown(result).replace("## optcv gate self-test\n\n", "", 1).replace("\n### ", "\n## ")
    return ("the gate's self-test", data["environment"],
            [f"{len(result.runs)} gates, {seconds[0]:.0f}–{seconds[-1]:.0f} s each "
             f"(median {statistics.median(seconds):.0f} s).", "", body])


def _unchanged_gates(folder: Path) -> tuple[str, dict[str, Any], list[str]]:
    from unchanged_gates import criteria  # this folder, first on sys.path when the script runs

    from optcv.gate.selftest import SelfTestResult, run_from_dict
    from optcv.report.gate import coverage_table

    record = json.loads((folder / "runs.json").read_text())
    runs = [run_from_dict({**json.loads((folder / r["json"]).read_text()), "injected_pct": {}, "seed": r["index"]})
            for r in record["runs"]]
    result = SelfTestResult(runs, (), {}, record["environment"])
    extra = " ".join(record.get("extra_args", []))
    return ("unchanged default gates", record["environment"],
            [f"`python benchmarks/proofs/unchanged_gates.py --gates {len(runs)}{' ' + extra if extra else ''}`: "
             f"{len(runs)} gates, {_walls(record['runs'])}.", "", coverage_table(result.coverage()), "",
             *[f"- {'met' if ok else '**not met**'}: {line}" for line, ok in criteria(result, record["runs"])]])


def _pytest_boundary(folder: Path) -> tuple[str, dict[str, Any], list[str]]:
    record = json.loads((folder / "runs.json").read_text())
    levels = sorted({r["level"] for r in record["runs"]})
    failed = [r for r in record["runs"] if r["exit"] not in (0, 1)]
    return ("the pytest gate on plain tests", record["environment"],
            [f"`python benchmarks/proofs/pytest_gate_boundary.py --levels {' '.join(f'{v:g}' for v in levels)}`: "
             f"{len(record['runs'])} runs, {_walls(record['runs'])}"
             f"{f'; {len(failed)} ended in an error' if failed else ''}.", "",
             *pytest_boundary_table(folder, record["runs"])])


def _suite_gate(folder: Path) -> tuple[str, dict[str, Any], list[str]]:
    record, suite = (json.loads((folder / name).read_text()) for name in ("runs.json", "suite.json"))
    runs = record["runs"]
    changes = list(dict.fromkeys(r["change"] for r in runs))
    rows = pytest_boundary_table(folder, runs, key="change")
    cost = [f"{where}: {costs['1']:.2f} µs at batch 1, {costs['64']:.2f} µs at batch 64"
            for where, costs in suite["copy_cost_us"].items()]
    return ("the gate on optcv's own suite", record["environment"],
            [f"`python benchmarks/proofs/suite_gate.py --runs {max(r['index'] for r in runs) + 1}` at "
             f"`{suite['head'][:12]}`: {len(runs)} runs of `pytest benchmarks/test_latency.py` (the pull-request "
             f"tier's 18 tests), {_walls(runs)}; exits "
             + ", ".join(f"{c} {sorted({r['exit'] for r in runs if r['change'] == c})}" for c in changes) + ".", "",
             "The change, in `OrtPredictor.predict`:", "", "```python", suite["change"].rstrip(), "```", "",
             "What three copies cost, measured apart (median of 9): " + "; ".join(cost) + ".", "", *rows])


def _side_bias(folder: Path) -> tuple[str, dict[str, Any], list[str]]:
    record = json.loads((folder / "record.json").read_text())
    variants = list(dict.fromkeys(g["variant"] for g in record["gates"]))
    rows = ["| variant | gates | intervals | mean change | read faster | wholly below | wholly above |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for variant in variants:
        gates = [g for g in record["gates"] if g["variant"] == variant]
        s = side_bias_summary([f for g in gates for f in g["findings"]])
        rows.append(f"| {variant} | {len(gates)} | {s['cases']} | {s['mean_change_pct']:+.2f} % | {s['read_faster']} | "
                    f"{s['excluded_below']} | {s['excluded_above']} |")
    return ("the gate's sides on identical code", record["environment"],
            [f"`python benchmarks/proofs/side_bias.py --variants {' '.join(variants)}`, interleaved.", "", *rows])


def _how_fast(folder: Path) -> tuple[str, dict[str, Any], list[str]]:
    from optcv.report.latency import how_fast_markdown

    result = json.loads((folder / "how-fast.json").read_text())
    return ("every backend on every reference model, against this machine's limits", result["environment"],
            [f"`optcv how-fast --backends {' '.join(result['config']['backends'])}`.", "", how_fast_markdown(result)])


KINDS: list[tuple[Callable[[Path], bool], Callable[[Path], tuple[str, dict[str, Any], list[str]]]]] = [
    (lambda f: (f / "selftest.json").is_file(), _self_test),
    (lambda f: (f / "how-fast.json").is_file(), _how_fast),
    (lambda f: (f / "record.json").is_file(), _side_bias),
    (lambda f: (f / "runs.json").is_file() and (f / "gate-00.json").is_file(), _unchanged_gates),
    (lambda f: (f / "runs.json").is_file() and (f / "suite.json").is_file(), _suite_gate),
    (lambda f: (f / "runs.json").is_file(), _pytest_boundary),
]


def machine_line(environment: dict[str, Any], name: str) -> str:
    versions = environment.get("versions", {})
    shown = ", ".join(f"{k} {versions[k]}" for k in ("torch", "onnxruntime", "openvino") if k in versions)
    return (f"Machine: {environment['cpu']}, {environment['cpu_count']} vCPU, {environment['system']}; Python "
            f"{environment['python']}, {shown}; recorded {name[-10:]}; load average {environment['load_average_1m']} "
            f"when it started.")


def page(folder: Path) -> str:
    name = folder.relative_to(RECORDS).as_posix()
    render = next(render for matches, render in KINDS if matches(folder))
    title, environment, body = render(folder)
    return "\n".join([f"# {name}", "", f"*{title[0].upper() + title[1:]}* — rendered by "
                      f"`benchmarks/proofs/render.py` from `benchmarks/proofs/records/{name}/`.", "",
                      machine_line(environment, folder.relative_to(RECORDS).parts[0]), "", *body]).rstrip() + "\n"


def record_folders() -> list[Path]:
    return sorted(f for f in RECORDS.rglob("*") if f.is_dir() and any(match(f) for match, _ in KINDS))


def pages() -> dict[Path, str]:
    folders = record_folders()
    names = [f.relative_to(RECORDS).as_posix() for f in folders]
    rendered = {PAGES / f"{name.replace('/', '--')}.md": page(folder)
                for name, folder in zip(names, folders, strict=True)}
    index = ["# Proofs, from their records", "",
             "Every page below is rendered from a committed record by `python benchmarks/proofs/render.py`; "
             "`--check` fails when a page differs from what its record renders.", "", "```{toctree}",
             ":maxdepth: 1", "", *[name.replace("/", "--") for name in names], "```", ""]
    rendered[PAGES / "index.md"] = "\n".join(index)
    return rendered


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page differs")
    args = parser.parse_args(argv)
    wanted = pages()
    if args.check:
        stale = sorted(_shown(p) for p, text in wanted.items()
                       if not p.is_file() or p.read_text(encoding="utf-8") != text)
        extra = sorted(_shown(p) for p in PAGES.glob("*.md") if p not in wanted)
        for path in stale + extra:
            print(f"{path}: differs from its record; run python benchmarks/proofs/render.py", file=sys.stderr)
        return 1 if stale or extra else 0
    PAGES.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8")
    for path in PAGES.glob("*.md"):
        if path not in wanted:
            path.unlink()
    print(f"wrote {len(wanted)} pages into {_shown(PAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
