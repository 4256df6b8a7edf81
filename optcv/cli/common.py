"""What every command shares: the parser class, argument types, the data and model options, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from optcv.cli.args import (  # noqa: F401  (re-exported: the commands import them from here)
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_REGRESSION,
    Parser,
    positive_float,
    positive_int,
)
from optcv.declared.config import (
    OPTCV_TOML,
    PYPROJECT,
    DeclarationError,
    DeclaredModel,
    find_declarations,
    load_declarations,
)
from optcv.errors import BackendCannotRun, OptcvError
from optcv.gate.config import BACKENDS as GATE_BACKENDS
from optcv.gate.config import MODELS
from optcv.gate.revisions import declaring_repository
from optcv.runtime import (
    BACKENDS,
    DEFAULT_BACKENDS,
    ModelSource,
    declared_source,
    resolve_sources,
    runnable_backends,
)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="CIFAR-10 folder (torchvision layout or train/ + test/ image folders); "
                                           "default $OPTCV_DATA_DIR, else ~/.cache/optcv/data")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision if absent")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="a checkpoint (.pt) and/or its ONNX export (.onnx), or the name of "
                                                  "a model declared in pyproject.toml or optcv.toml")
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), metavar="BACKEND",
                        help=f"any of {', '.join(BACKENDS)} (default: {' '.join(DEFAULT_BACKENDS)}, or a declared "
                             "model's own); the first is the reference for agreement and speed-ups")
    parser.add_argument("--declarations", type=Path, metavar="FILE",
                        help=f"the {PYPROJECT} or {OPTCV_TOML} that declares the model (default: the nearest one)")


def declarations_path(given: Path | None) -> Path:
    path = given or find_declarations()
    if path is None:
        raise DeclarationError(f"no {OPTCV_TOML} or {PYPROJECT} with a [tool.optcv] table here or in a parent folder; "
                               "declare your models there (see docs/tutorials/your-model.md)")
    return path


def is_declared_name(text: str) -> bool:
    """A bare name (no suffix, no folder) names a declared model; anything else is a model file."""
    return not Path(text).suffix and "/" not in text


def declared_model(name: str, declarations: Path | None) -> DeclaredModel:
    path = declarations_path(declarations)
    declared = load_declarations(path, known_backends=tuple(BACKENDS))
    if name not in declared:
        raise DeclarationError(f"no model {name!r} is declared in {path}; declared: {', '.join(declared)}")
    return declared[name]


def chosen_model(args: argparse.Namespace) -> tuple[ModelSource, tuple[str, ...], DeclaredModel | None]:
    """(what the predictors are made from, the backends to run, the declared model if one was named)."""
    named = [m for m in args.models if is_declared_name(m)]
    if not named:
        return resolve_sources(args.models), tuple(args.backends or DEFAULT_BACKENDS), None
    if len(args.models) != 1:
        raise OptcvError(f"name one declared model or model files (.pt/.onnx), not both: got {' '.join(args.models)}")
    model = declared_model(named[0], args.declarations)
    source = declared_source(model)
    return source, runnable_backends(tuple(args.backends or model.backends), source, _say_cannot_run), model


def _say_cannot_run(exc: BackendCannotRun) -> None:
    print(f"{exc.backend}: unavailable for this model, left out ({exc.reason})", file=sys.stderr)


def optimizer_lr(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"takes OPTIMIZER=VALUE pairs (e.g. --lr SGD=0.01), got {text!r}")
    return name, positive_float(value)


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def settings_text(settings: dict[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k != "backend")


def user_repository(models: Sequence[str], declarations: Path | None) -> tuple[Path, str] | None:
    """For a gate (or bisect) of declared models: (the user's repository, its declaring file's path inside it);
    None for optcv's reference models. A name the user's declarations hold is theirs, even where a reference model
    has it too (a repository that declares its own `resnet18` gates that one)."""
    path = declarations or find_declarations()
    known = load_declarations(declarations_path(path).resolve(), known_backends=GATE_BACKENDS) if path else {}
    declared = [m for m in models if m in known or m not in MODELS]
    if not declared:
        return None
    if path is None:
        raise OptcvError(f"unknown gate model {declared[0]}: choose from {', '.join(MODELS)}, or declare your own "
                         "in pyproject.toml (see docs/tutorials/your-model.md)")
    if len(declared) != len(models):
        raise OptcvError("gate either optcv's reference models or your declared ones, not both: got "
                         + " ".join(models))
    path = declarations_path(path).resolve()
    unknown = [m for m in declared if m not in known]
    if unknown:
        raise OptcvError(f"unknown gate model {unknown[0]}: choose from {', '.join([*MODELS, *known])}")
    return declaring_repository(path)
