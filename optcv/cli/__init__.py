"""The command line: parse arguments, call one library function, print its rendering.

One module per command in optcv.cli.commands, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from optcv import __version__
from optcv.cli.args import EXIT_ERROR, EXIT_INTERRUPTED, Parser
from optcv.cli.interrupts import interrupts_reach_the_command
from optcv.errors import OptcvError, first_line, missing_optional_module

# Each command's module (optcv.cli.commands.<name, - as _>) is imported when its parser is built: a command that
# needs no PyTorch (history) then starts without importing it.
COMMANDS = ("compare", "export", "evaluate", "run", "tune", "bench", "how-fast", "gate", "bisect", "history", "models",
            "cache")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the one named `only`."""
    parser = Parser(
        prog="optcv", description="Measure how CIFAR-10 classifiers train, tune and run on the CPU.")
    parser.add_argument("--version", action="version", version=f"optcv {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"optcv.cli.commands.{name.replace('-', '_')}").add_parser(commands)
    return parser


def _named_command(argv: Sequence[str]) -> str | None:
    """The command `argv` names, when its first word is one (then only its parser is built)."""
    first = next((a for a in argv if a != "--debug"), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_named_command(argv))
    args = parser.parse_args(argv)
    try:
        with interrupts_reach_the_command():
            return int(args.func(args) or 0)
    except OptcvError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"optcv {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:  # an optional package a library imported for the command: one line naming its extra
        missing = missing_optional_module(exc, f"optcv {args.command}")
        if missing is None or args.debug:
            raise
        print(f"optcv {args.command}: error: {missing}", file=sys.stderr)
        return missing.exit_code
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
    if code == EXIT_INTERRUPTED and not _threads_finished(INTERRUPT_GRACE_SECONDS):
        # A Ctrl-C can land inside a library's thread start-up (Optuna's heartbeat: a non-daemon thread started in
        # a context manager's __enter__, whose __exit__ then never runs), and Python's exit would wait for that
        # thread forever. Every file optcv writes is atomic, so ending without waiting loses nothing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


INTERRUPT_GRACE_SECONDS = 2.0


def _threads_finished(seconds: float) -> bool:
    """Whether every other non-daemon thread ends within `seconds` (in all, not each)."""
    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread())
