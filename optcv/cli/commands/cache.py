"""`optcv cache`: what optcv's cache holds; clear it, or only its stale entries."""

from __future__ import annotations

import argparse

from optcv.cache import AREAS, UNUSED_DAYS, cache_info, clear_cache
from optcv.report.cache import cache_markdown, cache_removed_line


def add_parser(commands: argparse._SubParsersAction) -> None:
    cache = commands.add_parser(
        "cache", help="what optcv's cache folder holds; clear it, or only its stale entries",
        description="The cache ($OPTCV_CACHE_DIR, else ~/.cache/optcv) holds decoded image folders, the benchmark "
                    "suite's and the gate's models, and torch.compile's kernels. Stale: a decode whose source "
                    f"folder is gone or changed, a model no run used for {UNUSED_DAYS} days or whose build died.")
    cache.add_argument("action", choices=("info", "clear", "key"),
                       help="info: what it holds; clear: remove entries; key: one key over everything the model "
                            "builds depend on here, for a CI cache (actions/cache's key)")
    cache.add_argument("--stale", action="store_true", help="clear: only the stale entries")
    cache.add_argument("--areas", nargs="+", default=list(AREAS), choices=list(AREAS), metavar="AREA",
                       help=f"clear: only these areas ({', '.join(AREAS)}; default all)")
    cache.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "info":
        print(cache_markdown(cache_info()))
        return 0
    if args.action == "key":
        from optcv.gate.sides import HEAD_TREE
        from optcv.gate.workers import models_cache_key

        print(models_cache_key(HEAD_TREE))
        return 0
    removed = clear_cache(stale_only=args.stale, areas=tuple(args.areas))
    print(cache_removed_line(removed, stale_only=args.stale))
    return 0
