"""`optcv run`: the whole study in one resumable command."""

from __future__ import annotations

import argparse
import sys
import time

from optcv.cli.common import (
    add_data_options,
    positive_int,
    progress,
)
from optcv.pipeline import PRESETS, resolve_config, run_pipeline


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="the whole study: compare, tune, export, parity, latency, report",
                              description="Runs every stage in order into one run folder and writes report.md and "
                                          "results.json. Re-running the same command resumes where it stopped.")
    parser.add_argument("--preset", default="quick", help="quick (minutes), default (full data) or course "
                                                       f"(the course's settings); one of {', '.join(PRESETS)}; "
                                                       "default %(default)s")
    parser.add_argument("--set", nargs="+", metavar="SECTION.FIELD=VALUE",
                     help="override any preset value, e.g. tune.trials=20 compare.epochs=3 bench.n_single=5000")
    parser.add_argument("--workers", type=positive_int, help="Optuna worker processes (default: the preset's)")
    parser.add_argument("--out", default="runs/run", help="run folder (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress display, only the final line")
    add_data_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args.preset, args.set, workers=args.workers)
    log = (lambda _message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    started = time.perf_counter()
    report = run_pipeline(config, args.out, data_dir=args.data_dir, download=args.download,
                          progress=progress(args), log=log)
    print(f"report: {report} (results: {report.parent / 'results.json'}); {time.perf_counter() - started:.0f} s")
    return 0
