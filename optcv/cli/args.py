"""The command line's light parts, which every command's parser needs and which import nothing heavy: the parser
class, exit codes, argument types. (`optcv history` parses and runs without importing PyTorch.)"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_REGRESSION = 1


EXIT_ERROR = 2


EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, where help is) and exit 2, as every other error."""
    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


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
