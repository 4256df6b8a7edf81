"""The command line: parse arguments, call one library function, print its rendering.

One module per command in optcv.cli.commands, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from optcv.cli.commands import bench, cache, compare, evaluate, export, gate, how_fast, run, tune
from optcv.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, Parser
from optcv.errors import OptcvError, first_line

COMMANDS = (compare, export, evaluate, run, tune, bench, how_fast, gate, cache)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="optcv", description="Measure how CIFAR-10 classifiers train, tune and run on the CPU.")
    parser.add_argument("--version", action="version", version=f"optcv {_version()}")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _version() -> str:
    from optcv import __version__  # the package's own __init__: no cycle, only a value

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OptcvError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"optcv {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a path that cannot be made, read or written: the user's to fix
        if args.debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"optcv {args.command}: error: cannot use{where}: {exc.strerror or first_line(exc)}; choose another "
              "path (or check its permissions and free space); --debug shows the traceback", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\noptcv {args.command}: interrupted; finished work is saved, re-run the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def run_cli(argv: Sequence[str] | None = None) -> None:
    """The console script: `main`, then exit. Once the work is done, Ctrl-C is ignored while the interpreter
    shuts down: there is nothing left to interrupt, and Python would print a finaliser's traceback."""
    code = main(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)

