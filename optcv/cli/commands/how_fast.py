"""`optcv how-fast`: every backend on every reference model, against this machine's limits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optcv._io import write_json, write_text
from optcv.cli.commands.history import add_history_option, record_in_history
from optcv.cli.common import (
    add_data_options,
    declarations_path,
    positive_float,
    positive_int,
)
from optcv.declared.config import find_declarations, load_declarations
from optcv.measure.howfast import HowFastConfig, run_how_fast
from optcv.measure.reference import REFERENCE_MODELS
from optcv.report.figures import plot_how_fast
from optcv.report.latency import how_fast_markdown
from optcv.runtime import BACKENDS


def add_parser(commands: argparse._SubParsersAction) -> None:
    default = HowFastConfig()
    how = commands.add_parser("how-fast", help="every backend on every reference model, against this machine's limits",
                              description="Builds (or loads) the benchmark suite's reference models and times every "
                                          "backend on each at batch 1 and batched, interleaved, against the fp32 GEMM "
                                          "peak and each runtime's per-call overhead measured in the same run; writes "
                                          "how-fast.md, .json and .png (docs/log/how-fast-2026-11-30.md).")
    how.add_argument("--models", nargs="+", default=list(default.models), metavar="MODEL",
                     help=f"reference models ({', '.join(default.models)}; default all) or models declared in "
                          "pyproject.toml or optcv.toml")
    how.add_argument("--declarations", type=Path, metavar="FILE",
                     help="the pyproject.toml or optcv.toml that declares your models (default: the nearest one)")
    how.add_argument("--backends", nargs="+", default=list(default.backends), metavar="BACKEND",
                     help="the backends timed (default %(default)s)")
    how.add_argument("--batch-size", type=positive_int, default=default.batch_size,
                     help="the batch size of the throughput column (default %(default)s)")
    how.add_argument("--seconds", type=positive_float, default=default.seconds_per_backend,
                     help="timed single-image work per backend and model (calls scale with the model's cost)")
    how.add_argument("--out", default="how-fast", help="folder for how-fast.md, how-fast.json, how-fast.png")
    how.add_argument("--quiet", action="store_true", help="no progress bars")
    add_history_option(how, recording=True)
    add_data_options(how)
    how.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = HowFastConfig(models=tuple(args.models), backends=tuple(args.backends), batch_size=args.batch_size,
                           seconds_per_backend=args.seconds)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    declared = None
    # With no declarations anywhere, a name that is not a reference model is reported as unknown (with the choices).
    if any(m not in REFERENCE_MODELS for m in args.models) and (args.declarations or find_declarations()):
        declared = load_declarations(declarations_path(args.declarations), known_backends=tuple(BACKENDS))
    result = run_how_fast(config, args.data_dir, log=log, declared=declared).to_dict()
    out = Path(args.out)
    markdown = how_fast_markdown(result)
    print(markdown)
    written = [write_text(out / "how-fast.md", markdown + "\n"), write_json(out / "how-fast.json", result),
               plot_how_fast(result, out / "how-fast.png")]
    print(f"wrote {', '.join(str(p) for p in written)}")
    record_in_history(args, result, summary=markdown)
    return 0
