"""A side of the A/B gate: an interpreter and a source tree, and the environment its workers get."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optcv.gate.revisions import default_base_revision, git, repo_root, resolve_revision, revision_tree
from optcv.gate.verdict import GateSetupError

HEAD_TREE = Path(__file__).resolve().parents[2]  # the folder that holds this optcv package


def code_hash(tree: Path) -> str:
    """optcv's source in `tree`, hashed as a worker hashes the side it runs in (optcv/gate/worker.py)."""
    root = tree / "optcv"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
# glibc's malloc raises its mmap threshold to the size of the last freed mmapped block, so where a large
# tensor lands (page-aligned or inside the heap) depends on the process's history; PyTorch's batched and
# training calls then ran up to 14-22 % apart in processes of identical code, and a 5 % slowdown measured
# +13.9 % here. A fixed threshold puts every large buffer at a page boundary in every worker: unchanged
# pairs then agreed within 1 % and the 5 % read +3.8 … +5.4 %. Both sides get the same settings.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "1073741824", "MALLOC_TOP_PAD_": "0"}


@dataclass(frozen=True)
class Side:
    label: str
    python: str
    tree: Path  # the folder that holds the `optcv` package
    revision: str | None = None  # the commit, or None for a working tree
    extra_path: tuple[Path, ...] = ()  # put before the tree on PYTHONPATH (the self-test's injection)

    def env(self, pad: int = 0) -> dict[str, str]:
        env = dict(os.environ)
        env["OPTCV_GATE_PAD"] = "x" * pad  # the same per worker index on both sides; see worker_pool
        # The side's tree first, so its optcv wins; then whatever the user had (a monorepo's packages).
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in (*self.extra_path, self.tree)), *inherited])
        env["PYTHONHASHSEED"] = "0"
        env.update(MALLOC_ENV)
        env.pop("PYTHONSTARTUP", None)
        return env

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "python": self.python, "tree": str(self.tree.resolve()), "revision": self.revision,
                "injection": [str(p) for p in self.extra_path]}


def check_python(python: str) -> str:
    """`python` as an absolute path (not resolved: a venv's interpreter is a link that must stay one), once
    it has shown it can import what the worker needs."""
    python = os.path.abspath(python)
    done = subprocess.run([python, "-c", "import sys, numpy, torch, onnxruntime; print(sys.version.split()[0])"],
                          capture_output=True, text=True) if Path(python).exists() else None
    if done is None or done.returncode != 0:
        detail = "does not exist" if done is None else (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise GateSetupError(f"base interpreter {python}: {detail}; give a Python with numpy, torch and "
                             "onnxruntime installed (e.g. another venv's bin/python)")
    return python


def same_length_trees(side: Side, workdir: Path) -> Side:
    """The side with its tree reached through `workdir/sides/<label>`, so both sides' paths (and so their
    environments and module paths) have the same length."""
    link = workdir / "sides" / side.label
    link.parent.mkdir(exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(side.tree.resolve(), target_is_directory=True)
    return replace(side, tree=link)


@contextmanager
def sides_for(against: str | None, base_python: str | None, head_tree: Path | None, repo: Path | None
              ) -> Iterator[tuple[Side, Side] | str]:
    """The base and head sides, or (when there is no second side) the reason why not."""
    head_tree = (head_tree or HEAD_TREE).resolve()
    head = Side("head", sys.executable, head_tree)
    python = check_python(base_python) if base_python else sys.executable
    if against is None and base_python:
        yield Side("base", python, head_tree), head
        return
    repo = repo or repo_root(head_tree)
    if repo is None:
        yield f"{head_tree} is not in a git repository, so there is no base revision to time against"
        return
    revision = against or default_base_revision(repo)
    commit = resolve_revision(repo, revision)
    if commit is None:
        shallow = git(repo, "rev-parse", "--is-shallow-repository") == "true"
        if shallow:
            yield f"revision {revision} is not in this shallow clone (fetch more history: git fetch --unshallow)"
        elif against is None:
            yield f"revision {revision} does not exist: a first commit has no parent"
        else:
            raise GateSetupError(f"revision {against} does not exist in {repo}; name a commit, branch or tag")
        return
    with revision_tree(repo, commit) as tree:
        if not (tree / "optcv" / "__init__.py").is_file():
            raise GateSetupError(f"revision {revision} has no optcv package at its root; pick a later revision")
        yield Side("base", python, tree, revision=f"{revision} ({commit[:12]})"), head
