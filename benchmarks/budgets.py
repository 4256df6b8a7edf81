"""Wall-clock budgets of the benchmark suite. Each is derived from measurements kept in budgets.json (the figures,
their machine and date): the limit is a stated multiple of the slowest one measured, a margin for the slower and
busier machines CI runs on, so no budget is a number picked by hand."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BUDGETS = Path(__file__).with_name("budgets.json")
SCHEMA = "optcv-budgets/1"


@dataclass(frozen=True)
class Budget:
    name: str
    unit: str
    measured: tuple[float, ...]  # each a measurement as the test takes it (a median of its tries, where it has them)
    measured_on: str
    factor: float  # the limit is this times the slowest measurement
    why: str

    @property
    def limit(self) -> float:
        return self.factor * max(self.measured)

    def describe(self) -> str:
        return (f"{self.limit:,.4g} {self.unit}: {self.factor:g} × the slowest of {len(self.measured)} measured "
                f"({min(self.measured):.3g}–{max(self.measured):.3g} {self.unit}, {self.measured_on}); {self.why}")


def budget(name: str, path: Path = BUDGETS) -> Budget:
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an {SCHEMA} file")
    entry = raw["budgets"][name]
    return Budget(name, entry["unit"], tuple(entry["measured"]), entry["measured_on"], float(entry["factor"]),
                  entry["why"])
