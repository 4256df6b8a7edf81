"""`optcv models`: the models declared in this repository, each built and checked as every command will."""

from __future__ import annotations

import argparse
from pathlib import Path

from optcv.cli.common import declarations_path, declared_model
from optcv.declared.build import check_model
from optcv.declared.config import OPTCV_TOML, PYPROJECT, DeclaredModel, load_declarations
from optcv.declared.inputs import synthetic_inputs
from optcv.errors import BackendCannotRun
from optcv.report.models import models_markdown
from optcv.runtime import BACKENDS, declared_source, make_predictor


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models", help="check and list your own models, declared in pyproject.toml or optcv.toml",
        description=f"Your models are declared in [tool.optcv.models.NAME] tables of {PYPROJECT} (or [models.NAME] "
                    f"in {OPTCV_TOML}), found in this folder or a parent. Each is imported, built and run once on "
                    "its declared input, and every backend it lists runs it once; a declaration that is wrong is "
                    "refused with the field and the fix.")
    models.add_argument("--declarations", type=Path, metavar="FILE",
                        help=f"the {PYPROJECT} or {OPTCV_TOML} to read (default: the nearest one)")
    models.add_argument("names", nargs="*", help="only these models (default: all)")
    models.add_argument("--no-backends", dest="backends", action="store_false",
                        help="build each model and run it once in PyTorch only: no export, no int8 twin, no backend "
                             "run (quick, for a large model)")
    models.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = declarations_path(args.declarations)
    names = args.names or list(load_declarations(path, known_backends=tuple(BACKENDS)))
    checks, cannot_run = [], []
    for name in names:
        model = declared_model(name, path)
        checks.append(check_model(model))
        if args.backends:
            cannot_run += _run_each_backend(model)
    print(models_markdown(path, checks, cannot_run))
    return 0


def _run_each_backend(model: DeclaredModel) -> list[BackendCannotRun]:
    """One call of every backend the model lists on a declared input: what would fail a command fails here. A
    backend with no kernel for the model is reported, and the others still run."""
    source = declared_source(model)
    example = synthetic_inputs(model.input, 1)
    cannot_run = []
    for backend in model.backends:
        try:
            with make_predictor(backend, source, 1) as predictor:
                predictor.predict(example)
        except BackendCannotRun as exc:
            cannot_run.append(BackendCannotRun(backend, model.name, exc.reason))
    return cannot_run
