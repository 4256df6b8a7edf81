"""`optcv evaluate`: per-class accuracy of each backend, their agreement and parity verdicts."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

import torch

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
from optcv.data import Split, load_cifar10, stratified_subset
from optcv.declared.config import DeclaredModel
from optcv.declared.inputs import labelled_inputs, sample_inputs
from optcv.measure.parity import agreement_on_inputs, evaluate_backends, parity
from optcv.report.parity import agreement_line, evaluation_text
from optcv.runtime import ModelSource, make_predictor


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="per-class accuracy of each backend and their agreement")
    add_model_options(evaluate)
    evaluate.add_argument("--threads", type=positive_int, help="threads per backend (default: all cores)")
    evaluate.add_argument("--test-size", type=positive_int, help="stratified test subset (default: all 10,000)")
    evaluate.add_argument("--json", help="also write the results to this JSON file")
    evaluate.add_argument("--quiet", action="store_true")
    add_data_options(evaluate)
    evaluate.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source, backends, declared = chosen_model(args)
    if declared is not None and declared.labels is None:
        return _agreement(args, source, backends, declared)
    if declared is not None:
        assert declared.labels is not None
        inputs, labels, classes = labelled_inputs(declared.input, declared.labels)
        split = stratified_subset(Split(torch.from_numpy(inputs), torch.from_numpy(labels), classes), args.test_size)
    else:
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
    failed = [v for v in verdicts if not v.passed]
    if failed:
        print(f"optcv evaluate: {len(failed)} backend(s) outside their parity tolerance: "
              f"{', '.join(v.backend for v in failed)}", file=sys.stderr)
        return EXIT_REGRESSION
    return 0


def _agreement(args: argparse.Namespace, source: ModelSource, backends: tuple[str, ...], model: DeclaredModel) -> int:
    inputs = sample_inputs(model.input, args.test_size or model.agreement_inputs)
    with all_closed([make_predictor(b, source, args.threads) for b in backends]) as predictors:
        results = agreement_on_inputs(predictors, inputs, model.tolerances)
    print(f"{model.name}: no labels declared, so each backend is held to {backends[0]}'s top-1 on {len(inputs):,} "
          f"{'sample' if model.input.samples else 'synthetic'} inputs")
    print("\n".join(agreement_line(r) for r in results))
    if args.json:
        write_json(args.json, {"model": model.name, "n_inputs": len(inputs),
                               "agreement": [{**asdict(r), "passed": r.passed} for r in results]})
        print(f"\nwrote {args.json}")
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"optcv evaluate: {len(failed)} backend(s) outside their parity tolerance: "
              f"{', '.join(r.backend for r in failed)}", file=sys.stderr)
        return EXIT_REGRESSION
    return 0
