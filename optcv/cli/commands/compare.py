"""`optcv compare`: the course's task 2."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from optcv.cli.common import (
    add_data_options,
    optimizer_lr,
    positive_int,
    progress,
)
from optcv.data import load_cifar10
from optcv.env import describe_environment
from optcv.report.compare import compare_text
from optcv.report.figures import plot_loss_comparison
from optcv.training.compare import CompareConfig, compare_best_two, compare_optimizers, summarize, training_losses
from optcv.training.train import OPTIMIZERS


def add_parser(commands: argparse._SubParsersAction) -> None:
    default = CompareConfig()
    compare = commands.add_parser("compare", help="train TutorialNet with several optimizers and compare losses",
                                  description="The course's task 2: same initial weights and batches for every "
                                              "optimizer; writes the loss plot, histories and checkpoints.")
    compare.add_argument("--optimizers", nargs="+", default=list(default.optimizers), metavar="NAME",
                         help=f"any of {', '.join(OPTIMIZERS)} (default: {' '.join(default.optimizers)})")
    compare.add_argument("--epochs", type=positive_int, default=default.epochs,
                         help="epochs per optimizer and seed (default %(default)s, the course's)")
    compare.add_argument("--batch-size", type=positive_int, default=default.batch_size,
                         help="default %(default)s, the course's")
    compare.add_argument("--lr", nargs="+", type=optimizer_lr, metavar="OPT=LR",
                         help="learning rate per optimizer, e.g. SGD=0.01 (defaults: "
                              + ", ".join(f"{k} {v['lr']}" for k, (_, v) in OPTIMIZERS.items()) + ")")
    compare.add_argument("--seed", type=int, default=default.seed, help="the first seed (default %(default)s)")
    compare.add_argument("--seeds", type=positive_int, default=default.seeds,
                         help="train every optimizer with this many seeds and report mean ± std and a test of the "
                              "difference (default %(default)s)")
    compare.add_argument("--train-size", type=positive_int, default=default.train_size,
                         help="stratified training subset (default: all 50,000)")
    compare.add_argument("--test-size", type=positive_int, default=default.test_size,
                         help="stratified test subset (default: all 10,000)")
    compare.add_argument("--out", default="runs/compare", help="run folder (default %(default)s)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    add_data_options(compare)
    compare.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    lrs = dict(args.lr or [])
    config = CompareConfig(optimizers=tuple(args.optimizers), epochs=args.epochs, batch_size=args.batch_size,
                           lrs=lrs, seed=args.seed, seeds=args.seeds, train_size=args.train_size,
                           test_size=args.test_size)
    data = load_cifar10(args.data_dir, download=args.download, progress=progress(args))
    result = compare_optimizers(data, config, args.out, progress=progress(args))
    plot_loss_comparison(training_losses(result), result.loss_plot)
    print(compare_text([asdict(s) for s in summarize(result)], [asdict(d) for d in compare_best_two(result)],
                       str(result.loss_plot), str(result.checkpoint_path(config.optimizers[0])),
                       str(result.out_dir), describe_environment()))
    return 0
