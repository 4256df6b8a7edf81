"""optcv's cache folder: what it holds, which entries are stale, and clearing them.

Areas: decoded image folders (optcv.data), the benchmark suite's reference models and their timing builds
(optcv.measure.reference), the A/B gate's models (optcv.gate.worker), the exports of users' declared models
(optcv.runtime) and torch.compile's kernels (optcv.backends.torch_compile). A decode is stale when its source
folder is gone or changed, or its origin is unknown (an older optcv); a model entry when no run has used it for
`UNUSED_DAYS` (each use touches its key.json) or its build never finished.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from optcv._io import process_alive
from optcv.build_cache import BUILDING
from optcv.data import DecodeEntry, decode_entries, default_cache_dir, remove_decode_entry
from optcv.errors import OptcvError

DECODES = "cifar10-cache"
MODEL_AREAS = ("bench-models", "timing-models", "gate-artifacts", "declared-models")
COMPILED = "inductor"
AREAS = (DECODES, *MODEL_AREAS, COMPILED)
UNUSED_DAYS = 14
KEY_FILE = "key.json"
BUILD_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class CacheEntry:
    area: str
    path: Path
    bytes: int
    source: str | None  # decodes: the folder decoded; models: None
    state: str  # "current", or why it is stale: "source gone", "source changed", "origin unknown", ...
    last_used: float | None  # seconds since the epoch (models), None where not tracked

    @property
    def stale(self) -> bool:
        return self.state != "current"


@dataclass(frozen=True)
class CacheInfo:
    root: Path
    entries: tuple[CacheEntry, ...]

    def bytes(self, area: str | None = None) -> int:
        return sum(e.bytes for e in self.entries if area in (None, e.area))


def mark_used(folder: Path) -> None:
    """Record that a cached model folder was used now (its key.json's modification time)."""
    try:
        (folder / KEY_FILE).touch(exist_ok=True)
    except OSError:
        pass  # a read-only cache still serves; the entry only looks older than it is


def cache_info(root: Path | None = None, *, now: float | None = None) -> CacheInfo:
    root = Path(root) if root else default_cache_dir()
    now = time.time() if now is None else now
    entries: list[CacheEntry] = [_decode_entry(e) for e in decode_entries(root / DECODES)]
    for area in MODEL_AREAS:
        if (root / area).is_dir():
            entries.extend(_model_entry(area, p, now) for p in sorted((root / area).iterdir()) if p.is_dir())
    if (root / COMPILED).is_dir():
        entries.append(CacheEntry(COMPILED, root / COMPILED, _size(root / COMPILED), None, "current", None))
    return CacheInfo(root, tuple(entries))


def clear_cache(root: Path | None = None, *, stale_only: bool = False, areas: tuple[str, ...] = AREAS,
                now: float | None = None) -> list[CacheEntry]:
    """Remove the entries of `areas` (only the stale ones with `stale_only`); return what was removed."""
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        raise OptcvError(f"unknown cache area {unknown[0]!r}: choose from {', '.join(AREAS)}")
    info = cache_info(root, now=now)
    removed = [e for e in info.entries if e.area in areas and (e.stale or not stale_only)]
    for entry in removed:
        if entry.area == DECODES:
            remove_decode_entry(entry.path)
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
    return removed


def _decode_entry(entry: DecodeEntry) -> CacheEntry:
    if entry.source is None:
        state = "origin unknown"
    elif entry.source_gone:
        state = "source gone"
    elif entry.source_changed():
        state = "source changed"
    else:
        state = "current"
    return CacheEntry(DECODES, entry.path, entry.bytes, entry.source, state, None)


def _model_entry(area: str, folder: Path, now: float) -> CacheEntry:
    key = folder / KEY_FILE
    if BUILDING in folder.name:  # optcv.build_cache's staging folder: its builder's pid ends the name
        pid = folder.name.rpartition(BUILDING)[2]
        alive = pid.isdigit() and process_alive(int(pid))
        return CacheEntry(area, folder, _size(folder), None, "current" if alive else "build abandoned", None)
    if not key.is_file():
        # Another process may be building it right now; an hour without its key file means it died.
        building = now - folder.stat().st_mtime < BUILD_GRACE_SECONDS
        return CacheEntry(area, folder, _size(folder), None, "current" if building else "build unfinished", None)
    used = key.stat().st_mtime
    state = "current" if now - used <= UNUSED_DAYS * 86400 else f"unused for {UNUSED_DAYS}+ days"
    return CacheEntry(area, folder, _size(folder), None, state, used)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
