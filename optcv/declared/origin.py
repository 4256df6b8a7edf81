"""Where a declared model's factory was imported from. Standard library only: the gate's harness worker loads this
file by its path (optcv.gate.worker.side.harness_module), whatever optcv the side holds."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def factory_outside_tree(module_name: str, tree: Path) -> str | None:
    """Why the imported factory module `module_name` is not the code of `tree`, or None where it is: it comes from
    `tree` or from an installed package (torchvision's models: the same on both sides by right). From anywhere else
    (an editable install, a path on PYTHONPATH) a gate's base would run the working tree's code, and compare the
    head with itself."""
    module = sys.modules[module_name]
    origin = Path(getattr(module, "__file__", None) or "?").resolve()
    installed = [Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")]
    if any(origin.is_relative_to(folder) for folder in (tree.resolve(), *installed)):
        return None
    return (f"the factory's module {module_name} was imported from {origin}, outside this side's tree {tree} and "
            "the installed packages; declare a module inside the repository that is importable from the declaring "
            "file's folder")
