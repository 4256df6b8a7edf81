"""What every command shares: the parser class, argument types, the data and model options, exit codes."""

from __future__ import annotations

import argparse
from typing import Any

from optcv.runtime import BACKENDS, DEFAULT_BACKENDS

EXIT_REGRESSION = 1


EXIT_ERROR = 2


EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, where help is) and exit 2, as every other error."""
    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="CIFAR-10 folder (torchvision layout or train/ + test/ image folders); "
                                           "default $OPTCV_DATA_DIR, else ~/.cache/optcv/data")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision if absent")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="a checkpoint (.pt) and/or its ONNX export (.onnx)")
    parser.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), choices=list(BACKENDS),
                        metavar="BACKEND", help=f"any of {', '.join(BACKENDS)} (default: pytorch onnxruntime); "
                                            "the first is the reference for agreement and speed-ups")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def optimizer_lr(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"takes OPTIMIZER=VALUE pairs (e.g. --lr SGD=0.01), got {text!r}")
    return name, positive_float(value)


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def settings_text(settings: dict[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k != "backend")
