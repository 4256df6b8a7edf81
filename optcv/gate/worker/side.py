"""The side's own optcv, as the worker reaches it: modules by role in either package layout, its code's hash, the
library versions, and the head's build cache loaded by its path."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

# Where each module lives in the side's optcv: the package layout, then the flat layout of the revisions before it,
# so that a gate can still time a base revision from before the move.
SIDE_MODULES: dict[str, tuple[str, ...]] = {
    "models": ("optcv.training.models", "optcv.models"),
    "train": ("optcv.training.train", "optcv.train"),
    "export": ("optcv.backends.onnx_export", "optcv.export"),
    "runtime": ("optcv.runtime",),
    "quantize": ("optcv.backends.onnxruntime_int8", "optcv.quantize"),
    "data": ("optcv.data",),
    "cache": ("optcv.cache",),
    "declarations": ("optcv.declared.config",),
    "declared_inputs": ("optcv.declared.inputs",),
}
HARNESS_ROOT = Path(__file__).resolve().parents[2]  # the head's optcv package: this harness's own


def side_module(name: str) -> Any:
    """The side's module for `name`, in whichever layout the side has."""
    for candidate in SIDE_MODULES[name]:
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if not (exc.name and candidate.startswith(exc.name)):
                raise  # the module exists and something it imports is missing: the side's own error
    raise ModuleNotFoundError(f"this side's optcv has none of {', '.join(SIDE_MODULES[name])}")


def side_module_names(tree: Path, roles: tuple[str, ...]) -> list[str]:
    """The module names of `roles` in the layout the side's tree has (found by file, before anything is imported)."""
    names = []
    for role in roles:
        for candidate in SIDE_MODULES[role]:
            path = tree.joinpath(*candidate.split("."))
            if (path / "__init__.py").is_file() or path.with_suffix(".py").is_file():
                names.append(candidate)
                break
    return names


def side_optcv() -> Any:
    return importlib.import_module("optcv")  # by name: the side's, never this harness's


def side_tree() -> Path:
    """The folder that holds the side's optcv package."""
    return Path(side_optcv().__file__).resolve().parents[1]


def optcv_file() -> str:
    return str(Path(side_optcv().__file__).resolve())


def side_code_hash() -> str:
    """A hash of every source file of the side's optcv, by its path inside the package."""
    root = Path(side_optcv().__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "onnxruntime", "onnx", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def harness_module(name: str) -> Any:
    """A standard-library module of the head's optcv (e.g. build_cache), loaded by its path under a private name,
    so that the side's optcv never supplies it."""
    private = f"_optcv_harness_{name.replace('.', '_')}"
    if private not in sys.modules:
        spec = importlib.util.spec_from_file_location(private, HARNESS_ROOT / f"{name.replace('.', '/')}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module
        spec.loader.exec_module(module)
    return sys.modules[private]
