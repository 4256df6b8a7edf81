"""What `optcv cache` shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optcv.cache import AREAS
from optcv.report.tables import markdown_table, size_text


def cache_markdown(info: Any) -> str:
    """Per area its entries and size, then every decode with its source and every stale entry with why."""

    rows = [{"area": area, "entries": sum(1 for e in info.entries if e.area == area),
             "stale": sum(1 for e in info.entries if e.area == area and e.stale), "size": size_text(info.bytes(area))}
            for area in AREAS]
    lines = [f"cache: {info.root} ({size_text(info.bytes())})", "", markdown_table(rows)]
    listed = [e for e in info.entries if e.source is not None or e.stale]
    if listed:
        lines += ["", markdown_table([{"entry": f"{e.area}/{e.path.name}", "size": size_text(e.bytes),
                                       "state": e.state, "source": e.source} for e in listed])]
    if any(e.stale for e in info.entries):
        lines += ["", "`optcv cache clear --stale` removes the stale entries; `optcv cache clear` everything."]
    return "\n".join(lines)


def cache_removed_line(removed: Sequence[Any], *, stale_only: bool) -> str:
    what = "stale " if stale_only else ""
    return f"removed {len(removed)} {what}cache entr{'y' if len(removed) == 1 else 'ies'}, " \
           f"{size_text(sum(e.bytes for e in removed))}"
