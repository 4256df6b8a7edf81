"""`optcv models`: the models declared in this repository, each built and checked as every command will."""

from __future__ import annotations

import argparse
from pathlib import Path

from optcv.cli.common import declarations_path, declared_model
from optcv.declared.build import check_model
from optcv.declared.config import OPTCV_TOML, PYPROJECT, load_declarations
from optcv.report.models import models_markdown
from optcv.runtime import BACKENDS


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models", help="check and list your own models, declared in pyproject.toml or optcv.toml",
        description=f"Your models are declared in [tool.optcv.models.NAME] tables of {PYPROJECT} (or [models.NAME] "
                    f"in {OPTCV_TOML}), found in this folder or a parent. Each is imported, built and run once on "
                    "its declared input; a declaration that is wrong is refused with the field and the fix.")
    models.add_argument("--declarations", type=Path, metavar="FILE",
                        help=f"the {PYPROJECT} or {OPTCV_TOML} to read (default: the nearest one)")
    models.add_argument("names", nargs="*", help="only these models (default: all)")
    models.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = declarations_path(args.declarations)
    names = args.names or list(load_declarations(path, known_backends=tuple(BACKENDS)))
    checks = [check_model(declared_model(name, path)) for name in names]
    print(models_markdown(path, checks))
    return 0
