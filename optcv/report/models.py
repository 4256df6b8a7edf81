"""What `optcv models` shows: each declared model as optcv understood it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from optcv.declared.build import ModelCheck
from optcv.errors import BackendCannotRun
from optcv.report.tables import markdown_table


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def models_markdown(source: Path, checks: Sequence[ModelCheck], cannot_run: Sequence[BackendCannotRun] = ()) -> str:
    rows = [{"model": c.name, "from": c.source, "reference": c.reference, "input": c.input, "classes": c.classes,
             "parameters": _count(c.parameters), "labelled images": _count(c.labelled_images),
             "backends": ", ".join(c.backends), "batch sizes": ", ".join(map(str, c.batch_sizes)),
             "threads": ", ".join(map(str, c.threads))} for c in checks]
    lines = [f"{len(checks)} model(s) declared in {source}, each built and run once on its input:", "",
             markdown_table(rows)]
    if cannot_run:
        lines += ["", "Unavailable for their model (every command leaves them out of it and runs the others):"]
        lines += [f"- {c.backend} for {c.model}: {c.reason}" for c in cannot_run]
    return "\n".join(lines)
