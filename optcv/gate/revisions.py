"""The revisions a gate compares: git, the base revision by default, a revision checked out into a worktree."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from optcv._io import work_folder
from optcv.errors import GateSetupError


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise GateSetupError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip()


def repo_root(tree: Path) -> Path | None:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def declaring_repository(declarations: Path) -> tuple[Path, str]:
    """(the git repository that holds a file declaring a user's models, the file's path inside it): the trees a
    gate of those models compares, and where each revision declares them."""
    declarations = declarations.resolve()
    repo = repo_root(declarations.parent)
    if repo is None:
        raise GateSetupError(f"{declarations} is not in a git repository, so there is no base revision to gate "
                             "against; commit it to a git repository first")
    return repo, str(declarations.relative_to(repo.resolve()))


@dataclass(frozen=True)
class GitState:
    commit: str | None
    branch: str | None
    dirty: bool


def git_state(folder: Path) -> GitState:
    """The commit and branch checked out in `folder`, and whether the tree differs from it (a run on an uncommitted
    tree is kept, marked, never passed off as the commit's)."""
    def ask(*args: str) -> str | None:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = ask("rev-parse", "--verify", "--quiet", "HEAD")
    if commit is None:
        return GitState(None, None, False)
    branch = ask("rev-parse", "--abbrev-ref", "HEAD")
    status = ask("status", "--porcelain", "--untracked-files=no")
    return GitState(commit, None if branch in (None, "HEAD") else branch, bool(status))


def checked_out(tree: Path) -> dict[str, str | bool]:
    """What a gate's JSON says of a working-tree side: its commit, branch, and whether it differs from the commit,
    so a history that imports the file files it under that commit. Empty outside git."""
    state = git_state(tree)
    if state.commit is None:
        return {}
    described: dict[str, str | bool] = {"commit": state.commit, "uncommitted_changes": state.dirty}
    return {**described, "branch": state.branch} if state.branch else described


def default_base_revision(repo: Path) -> str:
    """The merge-base with the main branch when on another branch, else HEAD~1."""
    branch = subprocess.run(["git", "-C", str(repo), "rev-parse", "--abbrev-ref", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for main in ("main", "master", "origin/main", "origin/master"):
        exists = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{main}^{{commit}}"],
                                capture_output=True, text=True).returncode == 0
        if exists and branch not in ("HEAD", main, main.split("/")[-1]):
            return git(repo, "merge-base", "HEAD", main)
    return "HEAD~1"


def resolve_revision(repo: Path, revision: str) -> str | None:
    """The commit `revision` names, or None where the history does not have it (a first commit, a shallow
    clone)."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def changed_since(repo: Path, revision: str, paths: tuple[str, ...]) -> list[str] | None:
    """The files under `paths` that differ between `revision` and the working tree (uncommitted and untracked changes
    included), or None when `revision` is not in the history."""
    commit = resolve_revision(repo, revision)
    if commit is None:
        return None
    changed = git(repo, "diff", "--name-only", commit, "--", *paths).splitlines()
    changed += git(repo, "ls-files", "--others", "--exclude-standard", "--", *paths).splitlines()
    return sorted(set(changed))


@contextmanager
def revision_tree(repo: Path, commit: str) -> Iterator[Path]:
    """`commit` checked out with `git worktree` into a temporary folder, removed afterwards (a killed gate's is removed
    by the next one, and git forgets it at the next prune)."""
    with work_folder("optcv-gate-base-") as folder:
        git(repo, "worktree", "add", "--detach", "--quiet", str(folder / "tree"), commit)
        try:
            yield folder / "tree"
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(folder / "tree")],
                           capture_output=True)
            subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
