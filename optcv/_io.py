"""Small file helpers: every file optcv writes appears whole or not at all."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optcv.errors import OptcvError


def default_cache_dir() -> Path:
    """optcv's cache folder: $OPTCV_CACHE_DIR, else the user's cache (XDG_CACHE_HOME or ~/.cache) /optcv."""
    if os.environ.get("OPTCV_CACHE_DIR"):
        return Path(os.environ["OPTCV_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "optcv"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_orphaned_temporaries(path: Path) -> None:
    """Delete the temporary files a killed writer of `path` left behind (their process is gone)."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        _remove_if_orphaned(orphan)


def remove_orphaned_temporaries(folder: Path) -> None:
    """Delete every temporary file under `folder` whose writer process is gone."""
    for candidate in folder.rglob(".*.tmp"):
        _remove_if_orphaned(candidate)


def _remove_if_orphaned(path: Path) -> None:
    parts = path.name.split(".")  # "", name…, pid, random (no dots), "tmp": as atomic_path names them
    if len(parts) >= 5 and parts[-3].isdigit() and not process_alive(int(parts[-3])):
        path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process of this id exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json_object(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object optcv wrote earlier, or a one-line error naming the file and `fix` (e.g. "delete it")."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptcvError(f"{what} {path} cannot be read ({type(exc).__name__}); {fix}") from exc
    if not isinstance(data, dict):
        raise OptcvError(f"{what} {path} is not a JSON object; {fix}")
    return data


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


@contextmanager
def folder_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) or fail at once, naming the holder."""
    import fcntl


    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise OptcvError(f"{path.parent} is in use by another {what} ({owner} holds the lock {path}); "
                         "wait for it to finish or use another --out") from None
    remove_orphaned_temporaries(path.parent)  # the folder is ours now: a writer's leftovers are orphans
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def work_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder named with this process's id, removed afterwards. A process killed outright cannot remove
    its own, so each new one first removes the folders of `prefix` whose process is gone."""
    root = Path(tempfile.gettempdir())
    for orphan in root.glob(f"{glob.escape(prefix)}*"):
        pid = orphan.name[len(prefix):].split("-", 1)[0]
        if orphan.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(orphan, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_deferring = False  # the main thread is inside interrupts_deferred()


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A Ctrl-C (SIGINT) that arrives inside the block is raised when the block ends, not in the middle of it.

    For library calls that must finish once begun: a KeyboardInterrupt raised inside SQLAlchemy's session
    clean-up can leave a connection in an open transaction, and every other connection to that SQLite file
    (Optuna's heartbeat thread) then waits out its lock timeout. Only the main thread receives signals; other
    threads, a nested block and a process that ignores SIGINT run the block unchanged.
    """
    global _deferring
    previous = signal.getsignal(signal.SIGINT)
    if _deferring or threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, previous)
        if held:
            previous(signal.SIGINT, None)
