"""`optcv bisect`: the first commit between --good and --bad that made a case slower, the A/B gate deciding."""

from __future__ import annotations

import argparse
import sys

from optcv._io import write_json
from optcv.cli.commands.gate import add_subject_options, add_timing_options
from optcv.cli.commands.history import add_history_option
from optcv.cli.common import (
    EXIT_REGRESSION,
    add_data_options,
    progress,
    user_repository,
)
from optcv.errors import OptcvError
from optcv.gate.config import GateConfig
from optcv.gate.revisions import repo_root
from optcv.gate.sides import HEAD_TREE
from optcv.gate.verdict import Thresholds
from optcv.history.bisect import RETRIES, BisectSetup, Outcome, run_bisect
from optcv.report.bisect import bisect_markdown


def add_parser(commands: argparse._SubParsersAction) -> None:
    default = GateConfig()
    bisect = commands.add_parser(
        "bisect", help="find the commit that made a case slower, the A/B gate deciding each step",
        description="Binary search between --good and --bad: each candidate commit is timed against the good one, "
                    "side by side, as `optcv gate` does. A step whose interval straddles the threshold is timed again "
                    "with twice the rounds; one that stays inconclusive ends the search with the range found so far. "
                    "Commits with the same timed code share a verdict. Every timing is kept in the history, and a "
                    "re-run resumes from it. Exit 0 when the commit is found, 1 when a step stayed inconclusive, 2 "
                    "on an error or when the bad commit is not slower than the good one.")
    bisect.add_argument("--good", required=True, metavar="REV", help="a commit that is not slower")
    bisect.add_argument("--bad", required=True, metavar="REV", help="a later commit that is slower")
    bisect.add_argument("--case", dest="cases", nargs="+", default=list(default.cases), metavar="GLOB",
                        help="the case(s) that got slower, as globs (e.g. 'tutorial/onnxruntime/b1/t1'); default: "
                             "the gate's pull-request set")
    add_subject_options(bisect, default)
    bisect.add_argument("--threshold", type=float, metavar="PCT",
                        help=f"slower means beyond this many %% (default {Thresholds().default_pct:g})")
    bisect.add_argument("--retries", type=int, default=RETRIES,
                        help="re-timings of an inconclusive step, each with twice the rounds")
    add_timing_options(bisect, default)
    bisect.add_argument("--json", help="write the steps and the result to this JSON file")
    bisect.add_argument("--quiet", action="store_true", help="no progress lines")
    add_history_option(bisect, recording=True)
    add_data_options(bisect)
    bisect.set_defaults(func=run)


def _setup(args: argparse.Namespace) -> BisectSetup:
    user = user_repository(args.models, args.declarations)
    if user:
        repo, declarations = user
    else:
        found = repo_root(HEAD_TREE)
        if found is None:
            raise OptcvError(f"optcv at {HEAD_TREE} is not a git clone, so it has no commits to bisect; run optcv from "
                             "a clone of its repository (or bisect your own declared models)")
        repo, declarations = found, None
    config = GateConfig(models=tuple(args.models), backends=tuple(args.backends), workers_per_side=args.workers,
                        case_seconds=args.case_seconds, max_case_seconds=max(args.case_seconds, args.max_case_seconds),
                        cases=tuple(args.cases), profile_ms=0, declarations=declarations)
    if args.retries < 0:
        raise OptcvError(f"--retries must be 0 or more, got {args.retries}")
    return BisectSetup(repo, ".", declarations is not None, config, Thresholds.load(None, args.threshold),
                       args.retries, args.data_dir, args.history, record=not args.no_history)


def run(args: argparse.Namespace) -> int:
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    result = run_bisect(_setup(args), args.good, args.bad, log=log, progress=progress(args))
    markdown = bisect_markdown(result)
    print(markdown)
    if args.json:
        write_json(args.json, result.to_dict())
    if result.outcome is Outcome.BAD_NOT_SLOWER:
        raise NothingSlower(f"no commit slower: {args.bad} is not slower than {args.good} on {' '.join(result.cases)} "
                            f"(if the slowdown is already in {args.good}, give an older --good)")
    return 0 if result.outcome is Outcome.FOUND else EXIT_REGRESSION


class NothingSlower(OptcvError):
    """The bad commit is not slower than the good one: there is no first slower commit to find."""
