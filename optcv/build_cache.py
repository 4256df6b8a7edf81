"""A cached build (a model trained, exported and quantised): keyed by every input that can change what is built,
written whole or not at all, and checked before each use.

The key holds the recipe; the source of every optcv module the building modules import, found statically (lazy
imports inside functions included), so a change anywhere in the build's code makes a new entry and a change
elsewhere in optcv does not; the versions of the libraries that compute a build; Python; the CPU's vendor and the
ISA flags that change kernels (AVX-512, VNNI and AMX change how weights train and round; ONNX Runtime quantises
with 7-bit weights where VNNI is missing).

An entry is built in a hidden folder beside its place, under a lock (two processes asking at once build it once),
and renamed into place with a manifest of every file's size and SHA-256. An entry whose manifest is missing or
names other inputs, or whose files do not match it (a half-copied cache, a disk error), is built again, never used.

Standard library only: the gate's worker loads this file by its path before it imports any side's optcv.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "key.json"  # optcv.cache.KEY_FILE: its modification time is the entry's last use
BUILD_LIBRARIES = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "numpy", "pillow")
BUILD_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                   "amx_int8", "amx_bf16")
BUILDING = ".building-"  # a hidden folder beside the entry, named with its builder's pid


def _module_file(tree: Path, name: str) -> Path | None:
    path = tree.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, name: str, package: str) -> set[str]:
    """Every module name `path` imports anywhere in its body, absolute, within `package`."""
    parent = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = parent.split(".")[: len(parent.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}  # `from a import b`: b may be a module
    return {n for n in found if n == package or n.startswith(package + ".")}


def source_closure(tree: Path, roots: Sequence[str], package: str = "optcv") -> dict[str, str]:
    """{path inside `tree`: SHA-256} of the modules `roots` import, transitively, and of the packages they sit in."""
    files: dict[str, Path] = {}
    pending = list(roots)
    while pending:
        parts = pending.pop().split(".")
        for depth in range(1, len(parts) + 1):  # a module's packages run their __init__ on import
            name = ".".join(parts[:depth])
            path = _module_file(tree, name)
            if path is not None and name not in files:
                files[name] = path
                pending += _imported_names(path, name, package)
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()}


def _cpu() -> tuple[str, list[str]]:
    vendor, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return vendor, [flag for flag in BUILD_ISA_FLAGS if flag in flags]


def machine_inputs() -> dict[str, Any]:
    """What of this machine and environment can change a build: Python, the build libraries, the CPU's kernels."""
    libraries: dict[str, str | None] = {}
    for name in BUILD_LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    vendor, isa = _cpu()
    return {"python": sys.version.split()[0], "libraries": libraries, "cpu_vendor": vendor, "isa": isa}


def key_of(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_table(folder: Path) -> dict[str, list[Any]]:
    return {str(p.relative_to(folder)): [p.stat().st_size, _sha256(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def whole(folder: Path, inputs: Mapping[str, Any]) -> bool:
    """Whether `folder` is a finished entry of exactly these inputs, every file as it was written."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        recorded = manifest["files"]
        if manifest.get("inputs") != json.loads(json.dumps(inputs)) or not recorded:
            return False
        for name, (size, digest) in recorded.items():
            path = folder / name
            if path.stat().st_size != size or _sha256(path) != digest:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned_builds(area: Path) -> list[Path]:
    """The hidden folders of builds whose process is gone (killed mid-build), removed."""
    removed = []
    for folder in area.glob(f".*{BUILDING}*") if area.is_dir() else ():
        pid = folder.name.rpartition(BUILDING)[2]
        if folder.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def build_once(folder: Path, inputs: Mapping[str, Any], build: Callable[[Path], None]) -> Path:
    """The entry at `folder` for `inputs`: reused when whole; else `build(staging)` writes its files into a hidden
    staging folder that, once they are written and listed, replaces `folder` in one rename."""
    if whole(folder, inputs):
        return folder
    with _locked(folder):
        if whole(folder, inputs):  # another process built it while this one waited for the lock
            return folder
        remove_abandoned_builds(folder.parent)
        staging = folder.parent / f".{folder.name}{BUILDING}{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            build(staging)
            manifest = {"inputs": inputs, "files": _file_table(staging)}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
            if folder.exists():  # a broken or outdated entry of the same name
                shutil.rmtree(folder)
            staging.rename(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return folder
