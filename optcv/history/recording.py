"""How a command's result enters the history: its commit, branch and machine added, then stored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from optcv.gate.revisions import git_state
from optcv.history.ingest import current_machine_environment, record_of
from optcv.history.store import HistoryStore


def record_result(data: dict[str, Any], *, tree: Path, location: str | Path | None = None, summary: str = "",
                  source: str = "") -> int:
    """Store a result just made in this process (a command's `to_dict()`), as run at `tree`'s checked-out commit;
    the run's id. A tree with uncommitted changes is recorded as such, so a chart never passes it off as the commit."""
    state = git_state(tree)
    made_here = {**data, "environment": current_machine_environment(data.get("environment", {}))}
    record = record_of(made_here, source=source, commit=state.commit, branch=state.branch, summary=summary)
    if state.dirty:
        record = replace(record, details={**record.details, "uncommitted_changes": True})
    with HistoryStore(location) as store:
        return store.add(record)
