"""What `optcv models` shows: each declared model as optcv understood it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from optcv.declared.build import ModelCheck
from optcv.report.tables import markdown_table


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def models_markdown(source: Path, checks: Sequence[ModelCheck]) -> str:
    rows = [{"model": c.name, "from": c.source, "reference": c.reference, "input": c.input, "classes": c.classes,
             "parameters": _count(c.parameters), "labelled images": _count(c.labelled_images),
             "backends": ", ".join(c.backends), "batch sizes": ", ".join(map(str, c.batch_sizes)),
             "threads": ", ".join(map(str, c.threads))} for c in checks]
    return "\n".join([f"{len(checks)} model(s) declared in {source}, each built and run once on its input:", "",
                      markdown_table(rows)])
