"""Run optcv's CLI with its atomic writes counted, pausing before the k-th rename so a test can kill it there.

Every file optcv writes goes to a temporary file that one `os.replace` puts in place (optcv._io.atomic_path).
This wrapper counts those renames; with OPTCV_FAULTS_PAUSE_AT=k it writes the destination's path to
OPTCV_FAULTS_MARKER at the k-th and sleeps, the temporary file complete but not yet renamed: the moment a
kill is most likely to leave a half-written file behind. OPTCV_FAULTS_COUNT receives the count and the
time of the last rename (time.monotonic, one clock for every process) at exit. OPTCV_FAULTS_STARTED names a file
written once the imports are done and the command begins (time.monotonic inside); OPTCV_FAULTS_IGNORE_SIGINT=1 makes
the command ignore Ctrl-C, as a hung one would (the harness's own test of its time-outs).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

_real_replace = os.replace
_renames = 0
_last_rename = 0.0
_pause_at = int(os.environ.get("OPTCV_FAULTS_PAUSE_AT", "0"))


def _counting_replace(src, dst, *args, **kwargs):
    global _renames, _last_rename
    if str(src).endswith(".tmp"):
        _renames += 1
        _last_rename = time.monotonic()
        if _renames == _pause_at:
            Path(os.environ["OPTCV_FAULTS_MARKER"]).write_text(str(dst))
            time.sleep(60)
    return _real_replace(src, dst, *args, **kwargs)


def _write_count() -> None:
    if os.environ.get("OPTCV_FAULTS_COUNT"):
        Path(os.environ["OPTCV_FAULTS_COUNT"]).write_text(f"{_renames} {_last_rename}")


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    real = signal.signal
    signal.signal = lambda signum, handler: real(signum, handler) if signum != signal.SIGINT else signal.SIG_IGN


if __name__ == "__main__":
    os.replace = _counting_replace
    atexit.register(_write_count)
    if os.environ.get("OPTCV_FAULTS_IGNORE_SIGINT") == "1":
        _ignore_sigint()
    from optcv.cli import run_cli

    if os.environ.get("OPTCV_FAULTS_STARTED"):
        Path(os.environ["OPTCV_FAULTS_STARTED"]).write_text(str(time.monotonic()))
    run_cli(sys.argv[1:])
