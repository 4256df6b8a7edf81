"""`optcv evaluate`: per-class accuracy of each backend, their agreement and parity verdicts."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from optcv._io import write_json
from optcv.backends.base import all_closed
from optcv.cli.common import (
    EXIT_REGRESSION,
    add_data_options,
    add_model_options,
    chosen_model,
    positive_int,
    progress,
)
from optcv.data import load_cifar10, stratified_subset
from optcv.declared.config import DeclaredModel
from optcv.measure.declared import check_declared
from optcv.measure.parity import evaluate_backends, parity
from optcv.report.parity import declared_parity_text, evaluation_text
from optcv.runtime import ModelSource, make_predictor


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="per-class accuracy of each backend and their agreement")
    add_model_options(evaluate)
    evaluate.add_argument("--threads", type=positive_int, help="threads per backend (default: all cores)")
    evaluate.add_argument("--test-size", type=positive_int, help="stratified test subset (default: all 10,000)")
    evaluate.add_argument("--json", help="also write the results to this JSON file")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    add_data_options(evaluate)
    evaluate.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source, backends, declared = chosen_model(args)
    if declared is not None:
        return _declared(args, source, backends, declared)
    data = load_cifar10(args.data_dir, download=args.download, progress=progress(args))
    split = stratified_subset(data.test, args.test_size, seed=0)
    with all_closed([make_predictor(b, source, args.threads) for b in backends]) as predictors:
        evaluation = evaluate_backends(predictors, split)
    verdicts = [parity(evaluation, b.backend) for b in evaluation.backends[1:]]
    print(evaluation_text(evaluation, verdicts))
    if args.json:
        write_json(args.json, {**evaluation.to_dict(),
                               "parity": [{**asdict(v), "passed": v.passed} for v in verdicts]})
        print(f"\nwrote {args.json}")
    return _verdict([v.backend for v in verdicts if not v.passed])


def _declared(args: argparse.Namespace, source: ModelSource, backends: tuple[str, ...], model: DeclaredModel) -> int:
    checked = check_declared(model, source, backends, args.threads, args.test_size)
    print(declared_parity_text(checked))
    if args.json:
        write_json(args.json, checked.to_dict())
        print(f"\nwrote {args.json}")
    return _verdict(checked.failed)


def _verdict(failed: list[str]) -> int:
    if failed:
        print(f"optcv evaluate: {len(failed)} backend(s) outside their parity tolerance: {', '.join(failed)}",
              file=sys.stderr)
        return EXIT_REGRESSION
    return 0
