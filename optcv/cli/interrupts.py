"""Ctrl-C always reaches the command.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal arrives. When that is
inside a finaliser or a weakref callback run by the garbage collector (SQLAlchemy runs several while Optuna's
storage is in use), Python reports the exception as "Exception ignored in …" and drops it: the interrupt is
lost and the command carries on (seen in `optcv tune`, interrupted 0.4-0.6 s into its work: exit 0, 9-14 s
later). While a command runs, such a swallowed interrupt is delivered again, to ordinary code; and once the
command has stopped, nothing delivered late raises (it would escape the CLI's own handling).
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REDELIVERY_DELAY_S = 0.05  # time for the garbage collector to finish the finaliser it was running


@contextmanager
def interrupts_reach_the_command() -> Iterator[None]:
    """Inside the block, a KeyboardInterrupt swallowed by a finaliser is raised again in the main thread."""
    running = True
    lock = threading.Lock()

    def on_sigint(signum: int, frame: Any) -> None:
        if running:
            raise KeyboardInterrupt

    def deliver_again() -> None:
        time.sleep(REDELIVERY_DELAY_S)  # raised at once, it could land in the hook or the finaliser again
        with lock:
            if running:
                _thread.interrupt_main()  # as if SIGINT arrived again: on_sigint runs at the next bytecode

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            threading.Thread(target=deliver_again, name="optcv-interrupt", daemon=True).start()
            return
        previous_hook(unraisable)

    previous_hook = sys.unraisablehook
    # Only where Python's own handler is in place (a job started in the background may ignore SIGINT).
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        running = False  # first: a delivery already on its way now raises nothing
        with lock:
            sys.unraisablehook = previous_hook
            if ours:
                signal.signal(signal.SIGINT, signal.default_int_handler)
