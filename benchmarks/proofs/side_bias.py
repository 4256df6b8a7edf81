"""Issue 35's measurement: does the gate lean to one side on identical code, and what removes the lean?

Unchanged gates (HEAD against the working tree at HEAD, every default case, `--even-if-unchanged`) under each
variant of what differs between the sides:

- the set-up order of a pair's two workers: base first, head first, alternated per pair, random, ABBA;
- the trees, set up in the gate's own order: swapped (the working tree as the base, the worktree as the head);
  both sides worktrees of HEAD; clean roots (each side's import root a folder holding only a link to its
  `optcv`, so the folders Python lists on import are alike: the working tree also holds .venv, tests, caches);
  the head left in place (the working tree where it lies, as the gate had it before it copied the head); both
  sides the same worktree (same-tree);
- the hash seed: every worker's 0 (fixed-hash-seed) against the gate's own, one per pair;
- every pair of a side from that side's one tree (shared-trees), against the gate's copy per pair.

    python benchmarks/proofs/side_bias.py --gates 3 --variants base-first head-first abba --out /tmp/side-bias

Per variant and gate, every case's change and 95 % interval go into OUT/record.json (a re-run goes on from there);
the summary per variant: the mean change over the cases, the share read faster, and the intervals that exclude zero
below and above. Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from interleaved import run_interleaved  # this folder, first on sys.path when the script runs
from render import side_bias_summary as summary

from optcv._io import work_folder
from optcv.data import default_cache_dir
from optcv.gate.compare import measure
from optcv.gate.config import SETUP_ORDERS, GateConfig
from optcv.gate.revisions import repo_root, resolve_revision, revision_tree
from optcv.gate.sides import HEAD_TREE, Side, copy_of_working_tree
from optcv.gate.verdict import Thresholds

TREES = ("swapped-trees", "both-worktrees", "clean-roots", "head-in-place", "same-tree")
FIXED_HASH_SEED = "fixed-hash-seed"  # the gate's order, every worker with hash seed 0 (before per-pair seeds)
SHARED_TREES = "shared-trees"  # every pair of a side from the one tree (before GateConfig.tree_per_pair)
VARIANTS = (*SETUP_ORDERS, *TREES, FIXED_HASH_SEED, SHARED_TREES)


def sides(variant: str, stack: ExitStack) -> tuple[Side, Side]:
    """The base and head of an unchanged gate under `variant`: HEAD's worktree and a copy of the working tree, as
    the gate has them, unless the variant swaps them, leaves the head in place or makes it a worktree too."""
    repo = repo_root(HEAD_TREE)
    assert repo is not None, "run it in optcv's git repository"
    commit = resolve_revision(repo, "HEAD")
    assert commit is not None
    worktree = stack.enter_context(revision_tree(repo, commit))
    base = Side("base", sys.executable, worktree, revision=f"HEAD ({commit[:12]})")
    head = Side("head", sys.executable, HEAD_TREE)
    if variant == "swapped-trees":
        return dataclasses.replace(base, tree=HEAD_TREE, revision=None), dataclasses.replace(head, tree=worktree)
    if variant == "both-worktrees":
        return base, dataclasses.replace(head, tree=stack.enter_context(revision_tree(repo, commit)))
    if variant == "clean-roots":
        roots = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optcv-roots-")))
        return _clean_root(base, roots), _clean_root(head, roots)
    if variant == "same-tree":  # both sides the one worktree: what is left is the gate's own treatment of a side
        return base, dataclasses.replace(head, tree=worktree)
    if variant == "head-in-place":  # the gate's head before copy_head_tree: the working tree where it lies
        return base, head
    return base, stack.enter_context(copy_of_working_tree(head, repo))


def _clean_root(side: Side, roots: Path) -> Side:
    root = roots / side.label
    root.mkdir()
    (root / "optcv").symlink_to(side.tree.resolve() / "optcv", target_is_directory=True)
    return dataclasses.replace(side, tree=root)


def one_gate(variant: str, seed: int, data_dir: str | None, cases: tuple[str, ...]) -> list[dict]:
    order = variant if variant in SETUP_ORDERS else GateConfig.setup_order  # a tree variant: the gate's own order
    config = GateConfig(setup_order=order, seed=seed, retest_failures=False, cases=cases,
                        tree_per_pair=variant != SHARED_TREES,
                        hash_seeds="fixed" if variant == FIXED_HASH_SEED else GateConfig.hash_seeds)
    with ExitStack() as stack:
        base, head = sides(variant, stack)
        workdir = stack.enter_context(work_folder("optcv-side-bias-"))
        result = measure(base, head, config, Thresholds(), data_dir=data_dir, cache_dir=default_cache_dir(),
                         workdir=workdir, log=lambda _m: None)
    return [{"case": f.case, "change_pct": f.change_pct, "ci_low_pct": f.ci_low_pct, "ci_high_pct": f.ci_high_pct,
             "pair_changes_pct": list(f.pair_changes_pct), "pairs_disagree": f.pairs_disagree}
            for f in result.findings]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--gates", type=int, default=3, help="unchanged gates per variant, interleaved")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--cases", nargs="+", default=list(GateConfig.cases),
                        help="the gate's case patterns (default: its pull-request set)")
    args = parser.parse_args(argv)
    record = run_interleaved(args.out / "record.json", "gates", "variant", args.variants, args.gates,
                             lambda variant, index: {"findings": one_gate(variant, seed=100 + index,
                                                                         data_dir=args.data_dir,
                                                                         cases=tuple(args.cases))},
                             lambda gate: f"{gate['variant']} #{gate['index'] + 1}: {summary(gate['findings'])}")
    for variant in args.variants:
        found = [f for g in record["gates"] if g["variant"] == variant for f in g["findings"]]
        if found:
            print(f"{variant}: {summary(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
