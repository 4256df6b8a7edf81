"""`optcv gate`: the A/B gate, its self-test, and the ratio gate of bench files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from optcv._io import write_json, write_text
from optcv.cli.commands.history import add_history_option, record_in_history
from optcv.cli.common import (
    EXIT_REGRESSION,
    add_data_options,
    positive_float,
    positive_int,
    progress,
    user_repository,
)
from optcv.errors import OptcvError
from optcv.gate import selftest
from optcv.gate.config import BACKENDS, MEASURES, MODELS, GateConfig
from optcv.gate.inject import TARGETS
from optcv.gate.ratio import (
    DEFAULT_BASELINE,
    DEFAULT_MARGIN,
    WRITE_RESULTS,
    load_json,
    ratio_gate,
    ratios_of,
    recorded_ratios,
)
from optcv.gate.run import run_gate
from optcv.gate.selftest import run_self_test
from optcv.gate.sides import HEAD_TREE
from optcv.gate.verdict import DEFAULT_THRESHOLD_PCT, GateResult, Thresholds
from optcv.report.gate import outcome_failure_lines, outcome_markdown, self_test_markdown


def add_parser(commands: argparse._SubParsersAction) -> None:
    default = GateConfig()
    gate = commands.add_parser(
        "gate", help="fail when the code got slower: this tree timed against a base revision in one run",
        description="A/B gate: the base revision (git worktree) and this source tree, each with its own models and "
                    "worker processes, timed case by case in a seeded random interleaved order. Exit 1 on a "
                    "regression, 2 on a set-up error. Given bench JSON files instead, gates their speed-up ratios "
                    "on --baseline (the older ratio gate).")
    gate.add_argument("results", nargs="*", help="optional: `optcv bench --json` files to gate on --baseline")
    gate.add_argument("--against", metavar="REV", help="base revision (default: the merge-base with main when on "
                                                       "another branch, else HEAD~1)")
    gate.add_argument("--base-python", metavar="PATH", help="the base side's interpreter (e.g. a venv with other "
                                                           "torch/onnxruntime versions); alone, base = this tree")
    gate.add_argument("--threshold", type=float, metavar="PCT",
                      help=f"a case fails above this slowdown (%%) when significant; default {DEFAULT_THRESHOLD_PCT:g}")
    gate.add_argument("--thresholds", metavar="FILE", help="per-case thresholds (benchmarks/gate_thresholds.json)")
    add_subject_options(gate, default)
    gate.add_argument("--cases", nargs="+", metavar="GLOB", default=list(default.cases),
                      help="the cases to time, as globs over names like tutorial/onnxruntime/b1/t1 or "
                           "resnet18/train/b64/t1; 'all' for every case of the models and backends (nightly); "
                           f"default: the pull-request set, {' '.join(default.cases)}")
    add_timing_options(gate, default)
    gate.add_argument("--measure", nargs="+", choices=list(MEASURES), default=list(default.measures),
                      help="what is compared: time; memory (each case's peak resident memory, in forked children, "
                           f"{default.memory_repeats} per side); instructions (the one-thread cases under valgrind, "
                           "whatever the machine's load; slow)")
    gate.add_argument("--seed", type=int, default=default.seed,
                      help="seeds the gate's random choices: turn orders, worker layouts, resampling "
                           "(default %(default)s)")
    gate.add_argument("--even-if-unchanged", action="store_true",
                      help="time base and head even when the optcv code their cases run is the same (by default: "
                           "nothing to time)")
    gate.add_argument("--no-retest", dest="retest", action="store_false", default=default.retest_failures,
                      help="decide on the first pass, without re-timing failing or undecided cases with fresh "
                           "workers")
    gate.add_argument("--json", help="write every number to this JSON file")
    gate.add_argument("--summary", help="write the Markdown summary here (also appended to $GITHUB_STEP_SUMMARY)")
    gate.add_argument("--allow-no-base", action="store_true",
                      help="where there is no base revision (a first commit, a shallow clone), gate on the ratios "
                           "recorded for this machine instead of failing with exit 2")
    gate.add_argument("--baseline", help="ratio baseline: needed for bench files; for --allow-no-base, by default "
                                         f"{DEFAULT_BASELINE.relative_to(DEFAULT_BASELINE.parents[2])}")
    gate.add_argument("--margin", type=float,
                      help=f"ratio gate only: allowed fall below the baseline (default {DEFAULT_MARGIN:g})")
    gate.add_argument("--self-test", action="store_true",
                      help="inject real slowdowns (below, at and above the threshold) and report how often each was "
                           "caught, with the change measured beside the one injected")
    gate.add_argument("--attribution", action="store_true",
                      help="self-test: profile the failing cases as a gate does, and report whether each slowdown "
                           "was named where it was put (an extra operator as that operator, a wait as time outside "
                           "operators)")
    gate.add_argument("--targets", nargs="+", choices=list(TARGETS),
                      help="self-test targets (default: those the measures see: a wait for time, extra arithmetic "
                           "for instructions, a retained buffer for memory)")
    gate.add_argument("--levels", nargs="+", type=positive_float, default=list(selftest.LEVELS_PCT),
                      help="self-test %%")
    gate.add_argument("--repeat", type=positive_int, default=selftest.REPEATS,
                      help="self-test runs per target and level")
    gate.add_argument("--unchanged", type=positive_int, default=selftest.UNCHANGED_REPEATS,
                      help="self-test runs of unchanged code")
    gate.add_argument("--self-test-thresholds", nargs="+", type=float, default=list(selftest.THRESHOLDS_PCT),
                      metavar="PCT", help="thresholds the self-test judges at")
    gate.add_argument("--quiet", action="store_true", help="no progress lines")
    add_history_option(gate, recording=True)
    add_data_options(gate)
    gate.set_defaults(func=run)


def add_subject_options(parser: argparse.ArgumentParser, default: GateConfig) -> None:
    """What is timed: the models (reference or declared) and backends; for the gate and the bisect."""
    parser.add_argument("--models", nargs="+", default=list(default.models), metavar="MODEL",
                        help=f"reference models ({', '.join(MODELS)}; default all), or models declared in your "
                             "repository's pyproject.toml or optcv.toml: then that repository's revisions are compared")
    parser.add_argument("--declarations", type=Path, metavar="FILE",
                        help="the pyproject.toml or optcv.toml that declares your models (default: the nearest one)")
    parser.add_argument("--backends", nargs="+", default=list(default.backends), choices=list(BACKENDS),
                        help="only cases of these backends (default: every backend)")


def add_timing_options(parser: argparse.ArgumentParser, default: GateConfig) -> None:
    """How long each case is timed; for the gate and the bisect."""
    parser.add_argument("--workers", type=positive_int, default=default.workers_per_side, help="workers per side")
    parser.add_argument("--case-seconds", type=positive_float, default=default.case_seconds,
                        help="timed work per case, both sides together")
    parser.add_argument("--max-case-seconds", type=positive_float, default=default.max_case_seconds,
                        help="a noisy case adds rounds until its interval is narrow enough, up to this long")


def run(args: argparse.Namespace) -> int:
    if args.results:
        return _gate_files(args)
    if args.self_test:
        return _gate_self_test(args)
    return _gate_ab(args)


def _gate_files(args: argparse.Namespace) -> int:
    if not args.baseline:
        raise OptcvError("gating bench result files needs --baseline FILE (e.g. benchmarks/baselines/ratios.json)")
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    measured: dict[str, dict[str, object]] = {}
    for path in args.results:
        measured.update(ratios_of(load_json(path, "results file", WRITE_RESULTS)))
    recorded, differences = recorded_ratios(args.baseline)
    if differences:
        print("baseline recorded on this machine with other software: " + "; ".join(differences))
    findings = ratio_gate(measured, recorded, margin)
    for finding in findings:
        print(finding.message())
    failed = [f for f in findings if not f.passed]
    if failed:
        print(f"{len(failed)} of {len(findings)} speed-ups fell more than {margin:.0%} below the baseline",
              file=sys.stderr)
        return EXIT_REGRESSION
    print(f"all {len(findings)} speed-ups within {margin:.0%} of the baseline")
    return 0


def _gate_config(args: argparse.Namespace, declarations: str | None = None) -> GateConfig:
    return GateConfig(models=tuple(args.models), backends=tuple(args.backends), workers_per_side=args.workers,
                      case_seconds=args.case_seconds, max_case_seconds=max(args.case_seconds, args.max_case_seconds),
                      cases=tuple(args.cases), seed=args.seed, retest_failures=args.retest, declarations=declarations,
                      measures=tuple(dict.fromkeys(args.measure)))


def _publish(args: argparse.Namespace, markdown: str, data: dict[str, object]) -> None:
    if args.json:
        write_json(args.json, data)
    if args.summary:
        write_text(args.summary, markdown)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")


def _gate_ab(args: argparse.Namespace) -> int:
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    user = user_repository(args.models, args.declarations)
    repo, declarations = user if user else (None, None)
    outcome = run_gate(_gate_config(args, declarations), Thresholds.load(args.thresholds, args.threshold),
                       against=args.against, base_python=args.base_python, head_tree=repo, repo=repo,
                       data_dir=args.data_dir,
                       baseline=args.baseline or DEFAULT_BASELINE,
                       even_if_unchanged=args.even_if_unchanged, allow_no_base=args.allow_no_base, log=log,
                       progress=progress(args))
    markdown = outcome_markdown(outcome)
    print(markdown)
    _publish(args, markdown, outcome.to_dict())
    for line in outcome_failure_lines(outcome):
        print(line, file=sys.stderr)
    if isinstance(outcome, GateResult):  # nothing timed (same code, the ratio fallback): nothing to keep
        record_in_history(args, outcome.to_dict(), tree=repo or HEAD_TREE, summary=markdown)
    return EXIT_REGRESSION if outcome.failures else 0


def _gate_self_test(args: argparse.Namespace) -> int:
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    targets = args.targets or [t for t in TARGETS if any(t in selftest.MEASURE_TARGETS[m] for m in args.measure)]
    plan = selftest.default_plan(targets, args.levels, args.repeat, args.unchanged)
    result = run_self_test(_gate_config(args), plan, thresholds=tuple(args.self_test_thresholds),
                           attribution=args.attribution, data_dir=args.data_dir, log=log, progress=progress(args),
                           record=args.json)
    markdown = self_test_markdown(result)
    print(markdown)
    _publish(args, markdown, result.to_dict())
    return 0
