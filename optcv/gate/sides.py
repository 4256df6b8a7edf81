"""A side of the A/B gate: an interpreter and a source tree, and the environment its workers get."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optcv._io import work_folder
from optcv.errors import GateSetupError
from optcv.gate.revisions import checked_out, default_base_revision, git, repo_root, resolve_revision, revision_tree

HEAD_TREE = Path(__file__).resolve().parents[2]  # the folder that holds this optcv package


def timed_code_hash(tree: Path) -> str:
    """The optcv source in `tree` that a side's workers run: the modules they take from their side
    (optcv.gate.worker.side) and everything those import. The gate's own code is not in it: both sides run the
    head's harness, so a change there times identical code (the gate's self-test checks such a change)."""
    from optcv.build_cache import key_of, source_closure
    from optcv.gate.worker.side import SIDE_MODULES, side_module_names

    return key_of(source_closure(tree, side_module_names(tree, tuple(SIDE_MODULES))))


# What can change a user's model: its code, its declarations, and the files they name (a README or a CI file
# cannot). A hash of these tells a commit that needs timing from one that does not.
SUBJECT_SUFFIXES = (".py", ".toml", ".onnx", ".pt", ".pth", ".bin", ".safetensors", ".json", ".cfg", ".yaml", ".yml")


def subject_hash(tree: Path) -> str:
    """The hash of what a user's repository's models are made from: its files of SUBJECT_SUFFIXES that git
    tracks or would track (what .gitignore leaves out, a venv or build output, is no part of a revision)."""
    files = {p for p in revision_files(tree) if p.suffix in SUBJECT_SUFFIXES and p.is_file()}
    return _files_hash(tree, sorted(files))


def revision_files(tree: Path) -> list[Path]:
    """The files of `tree` that git tracks or would track (not what .gitignore leaves out: a venv, build output)."""
    listed = subprocess.run(["git", "-C", str(tree), "ls-files", "-co", "--exclude-standard", "-z", "."],
                            capture_output=True)
    if listed.returncode == 0:
        return [tree / name for name in listed.stdout.decode().split("\0") if name]
    return [p for p in tree.rglob("*") if not any(part.startswith(".") for part in p.relative_to(tree).parts)]


def _files_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
# glibc's malloc raises its mmap threshold to the size of the last freed mmapped block, so where a large tensor
# lands depends on the process's history and identical code ran up to 22 % apart. A fixed threshold takes that away;
# glibc's largest (32 MiB), because a low one faults every activation in on every call (docs: the speed gate).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": "1073741824",
              "MALLOC_TOP_PAD_": "0"}


@dataclass(frozen=True)
class Side:
    label: str
    python: str
    tree: Path  # the folder that holds the `optcv` package
    revision: str | None = None  # the commit, or None for a working tree
    extra_path: tuple[Path, ...] = ()  # put before the tree on PYTHONPATH (the self-test's injection)
    # When the tree is a user's repository (their declared models are gated), the folder of the optcv that
    # measures them: the same on both sides. None: the tree is optcv's own, and each side runs its own optcv.
    harness: Path | None = None
    copied_from: Path | None = None  # the working tree this side's tree is a copy of (copy_of_working_tree)

    @property
    def source_tree(self) -> Path:
        """The tree as the user has it (not the copy the side runs from)."""
        return self.copied_from or self.tree

    @property
    def optcv_root(self) -> Path:
        """The folder whose optcv package the side's workers must import."""
        return self.harness or self.tree

    def env(self, pad: int = 0, hash_seed: int = 0) -> dict[str, str]:
        env = dict(os.environ)
        env["OPTCV_GATE_PAD"] = "x" * pad  # the same per worker pair on both sides; see pair_layouts
        # The side's tree first, so its optcv wins; then whatever the user had (a monorepo's packages).
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        # A user's tree comes before the harness, so a package of theirs also installed beside optcv is taken
        # from the revision being timed.
        own = (*self.extra_path, self.tree, *((self.harness,) if self.harness else ()))
        env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in own), *inherited])
        env["PYTHONHASHSEED"] = str(hash_seed)
        env.update(MALLOC_ENV)
        env.pop("PYTHONSTARTUP", None)
        return env

    def describe(self) -> dict[str, Any]:
        described = {"label": self.label, "python": self.python, "tree": str(self.source_tree.resolve()),
                     "revision": self.revision, "injection": [str(p) for p in self.extra_path],
                     "harness": str(self.harness) if self.harness else None}
        return {**described, **checked_out(self.source_tree)} if self.revision is None else described


# The worker's own reading of the versions (standard library only), run in the side's interpreter.
_VERSIONS = ("import json, runpy, sys; "
             "print(json.dumps(runpy.run_path(sys.argv[1])['versions']()))")
_SIDE_SCRIPT = Path(__file__).resolve().parent / "worker" / "side.py"


@functools.cache
def interpreter_versions(python: str) -> dict[str, str]:
    """Python's and the runtimes' versions in `python`'s environment (read from its metadata, nothing imported)."""
    done = subprocess.run([python, "-c", _VERSIONS, str(_SIDE_SCRIPT)], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {"python": "unknown"}


def side_versions(side: Side) -> dict[str, str]:
    return dict(interpreter_versions(side.python))


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


LINKED_FILE_BYTES = 1 << 20  # larger files (weights, data) are linked into a pair's tree, not copied


def pair_tree(side: Side, name: str, workdir: Path) -> Side:
    """The side with its tree a copy of its files (revision_files) at `workdir/sides/<label>-<name>`: paths as long
    on both sides, other files and paths for every pair. Files over LINKED_FILE_BYTES are symbolic links; a folder
    of the tree on the side's path (a `src/` layout's) is taken from the copy."""
    root = workdir / "sides" / f"{side.label}-{name}"
    source = side.tree.resolve()
    if not root.is_dir():
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for path in revision_files(source):
            # Compiled modules stay behind: a side whose tree had them (a copy the builder ran in) would load them,
            # the other compile, and the two processes' heaps would differ by that work.
            if not path.is_file() or path.suffix == ".pyc":
                continue
            target = staging / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.stat().st_size > LINKED_FILE_BYTES:
                target.symlink_to(path.resolve())
            else:
                shutil.copy2(path, target)
        staging.mkdir(parents=True, exist_ok=True)
        staging.rename(root)
    extra = tuple(root / p.relative_to(side.tree) if p.is_relative_to(side.tree) else p for p in side.extra_path)
    return replace(side, tree=root, extra_path=extra)


@contextmanager
def copy_of_working_tree(head: Side, repo: Path) -> Iterator[Side]:
    """The head with its tree a copy of the working tree's files (revision_files, as they are now, uncommitted changes
    and all) in a folder whose path has the length and shape of the base's worktree (revisions.revision_tree).

    Why: the two sides then differ in their code alone, not in where their files lie (every module's resolved path
    lives in each process's heap), and an edit made while the gate runs cannot reach the head's workers."""
    with work_folder("optcv-gate-head-") as folder:  # as long as revision_tree's "optcv-gate-base-"
        root = folder / "tree"
        for source in revision_files(repo):
            if source.is_file() or source.is_symlink():
                target = root / source.relative_to(repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target, follow_symlinks=False)
        yield replace(head, tree=root / head.tree.relative_to(repo.resolve()), copied_from=head.tree)


@contextmanager
def sides_for(against: str | None, base_python: str | None, head_tree: Path | None, repo: Path | None,
              user_repository: bool = False, copy_head: bool = False) -> Iterator[tuple[Side, Side] | str]:
    """The base and head sides, or (when there is no second side) the reason why not. With `user_repository`,
    the trees are a user's repository (its declared models are gated) and both sides measure with this optcv.
    With `copy_head`, the head runs from a copy of the working tree shaped like the base's worktree."""
    head_tree = (head_tree or HEAD_TREE).resolve()
    harness = HEAD_TREE if user_repository else None
    head = Side("head", sys.executable, head_tree, harness=harness)
    python = check_python(base_python) if base_python else sys.executable
    if against is None and base_python:
        yield Side("base", python, head_tree, harness=harness), head
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
        if not user_repository and not (tree / "optcv" / "__init__.py").is_file():
            raise GateSetupError(f"revision {revision} has no optcv package at its root; pick a later revision")
        # A user's repository at `repo` may be a sub-folder of its git root: the base is the same sub-folder.
        base_tree = tree / head_tree.relative_to(repo.resolve()) if user_repository else tree
        base = Side("base", python, base_tree, revision=f"{revision} ({commit[:12]})", harness=harness)
        if not copy_head:
            yield base, head
            return
        with copy_of_working_tree(head, repo.resolve()) as copied:
            yield base, copied
