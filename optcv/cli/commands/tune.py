"""`optcv tune`: the Optuna search, resumable and parallel."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from optcv.cli.common import (
    add_data_options,
    positive_float,
    positive_int,
    progress,
)
from optcv.data import load_cifar10
from optcv.errors import OptcvError
from optcv.report.study import statistics_text, tune_text, write_plots
from optcv.training.retrain import finish
from optcv.training.study_results import study_summary
from optcv.training.study_storage import default_storage, open_study
from optcv.training.tune import PRUNERS, SearchSpace, TuneConfig
from optcv.training.tune import tune as run_tune


def add_parser(commands: argparse._SubParsersAction) -> None:
    default = TuneConfig()
    space = default.space
    tune = commands.add_parser("tune", help="Optuna search over TunableNet (resumable, parallel)",
                               description="The course's task 3. Re-running the same command resumes the study "
                                           "and runs only the trials still missing to reach --trials.")
    tune.add_argument("--trials", type=positive_int, default=default.trials, help="finished trials to reach in total")
    tune.add_argument("--epochs", type=positive_int, default=default.epochs,
                      help="epochs per trial (default %(default)s)")
    tune.add_argument("--train-size", type=positive_int, default=default.train_size,
                      help="training subset per trial (default %(default)s, Optuna's PyTorch example)")
    tune.add_argument("--val-size", type=positive_int, default=default.val_size,
                      help="validation images held out of the training split (default %(default)s)")
    tune.add_argument("--batch-size", type=positive_int, default=default.batch_size,
                      help="training batch size of every trial (default %(default)s)")
    tune.add_argument("--timeout", type=positive_float, help="stop starting new trials after this many seconds")
    tune.add_argument("--pruner", default=default.pruner, help=f"{', '.join(PRUNERS)} (default %(default)s)")
    tune.add_argument("--seed", type=int, default=default.seed,
                      help="the sampler's and the data's seed (default %(default)s)")
    tune.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine")
    tune.add_argument("--storage", help="Optuna storage URL (default: a file in --out); e.g. "
                                        "postgresql+psycopg://user@host/db to spread over machines")
    tune.add_argument("--study-name", default="optcv", help="the study's name in its storage (default %(default)s)")
    tune.add_argument("--out", default="runs/tune", help="run folder (default %(default)s)")
    tune.add_argument("--final-epochs", type=positive_int, help="epochs to retrain the best (default --epochs)")
    tune.add_argument("--final-seeds", type=positive_int, default=default.final_seeds,
                      help="retrain the best configuration with this many seeds (its test accuracy's spread; "
                           "default %(default)s)")
    tune.add_argument("--no-retrain", action="store_true", help="skip retraining the best configuration")
    tune.add_argument("--show", action="store_true", help="print an existing study's statistics and stop")
    tune.add_argument("--n-layers", nargs=2, type=positive_int, default=list(space.n_layers), metavar=("LOW", "HIGH"),
                      help="search space: hidden layers (default %(default)s)")
    tune.add_argument("--n-units", nargs=2, type=positive_int, default=list(space.n_units), metavar=("LOW", "HIGH"),
                      help="search space: units per layer (default %(default)s)")
    tune.add_argument("--dropout", nargs=2, type=float, default=list(space.dropout), metavar=("LOW", "HIGH"),
                      help="search space: dropout per layer (default %(default)s)")
    tune.add_argument("--lr-range", nargs=2, type=positive_float, default=list(space.lr), metavar=("LOW", "HIGH"),
                      help="search space: learning rate, log-uniform (default %(default)s)")
    tune.add_argument("--optimizers", nargs="+", default=list(space.optimizers), metavar="NAME",
                      help="search space: optimizers (default %(default)s)")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    add_data_options(tune)
    tune.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.show:
        url = args.storage or default_storage(Path(args.out), 1)
        if not args.storage and not any((Path(args.out) / f).is_file() for f in ("study.db", "study.journal")):
            raise OptcvError(f"no study in {args.out}; run `optcv tune --out {args.out}` first or pass --storage")
        print(statistics_text(study_summary(open_study(url, args.study_name))))
        return 0
    space = SearchSpace(n_layers=tuple(args.n_layers), n_units=tuple(args.n_units), dropout=tuple(args.dropout),
                        optimizers=tuple(args.optimizers), lr=tuple(args.lr_range))
    config = TuneConfig(trials=args.trials, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size,
                        batch_size=args.batch_size, pruner=args.pruner, seed=args.seed,
                        final_epochs=args.final_epochs or args.epochs, final_seeds=args.final_seeds, space=space)
    data = load_cifar10(args.data_dir, download=args.download, progress=progress(args))
    started = time.perf_counter()
    study = run_tune(config, args.out, data_dir=args.data_dir, data=data, storage=args.storage,
                     study_name=args.study_name, workers=args.workers, timeout=args.timeout,
                     progress=progress(args))
    search_seconds = time.perf_counter() - started
    summary = finish(study, config, data, args.out, retrain=not args.no_retrain, progress=progress(args))
    write_plots(study, Path(args.out))
    print(tune_text(summary, search_seconds, args.workers, len(data.train), Path(args.out)))
    return 0
