"""What the history keeps of a run: where it ran (commit, branch, machine), when, and every per-case number with its
interval, as typed records that every source (a gate, a bench, how-fast, a pytest-benchmark file) is turned into."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

# The kinds of run the history holds, by the command that made them.
GATE, BENCH, HOW_FAST, PYTEST_BENCHMARK, BISECT = "gate", "bench", "how-fast", "pytest-benchmark", "bisect"
KINDS = (GATE, BENCH, HOW_FAST, PYTEST_BENCHMARK, BISECT)

# The metrics a measurement can be; which way is worse decides what a step up or down means.
LATENCY_US, THROUGHPUT, CHANGE_PCT = "latency_us", "images_per_s", "change_pct"
# A gate's memory and instruction findings: the head's value, and its change against the base.
PEAK_KIB, MEMORY_CHANGE_PCT = "peak_kib", "memory_change_pct"
INSTRUCTIONS, INSTRUCTIONS_CHANGE_PCT = "instructions_per_call", "instructions_change_pct"
HIGHER_IS_WORSE = {LATENCY_US: True, THROUGHPUT: False, CHANGE_PCT: True, PEAK_KIB: True, MEMORY_CHANGE_PCT: True,
                   INSTRUCTIONS: True, INSTRUCTIONS_CHANGE_PCT: True}
UNKNOWN_ISA = ("isa not recorded",)  # never the same machine as one whose flags are known


@dataclass(frozen=True)
class Machine:
    """The hardware a timing belongs to: timings are compared only within one machine key (CPU model, ISA flags,
    cores); the software versions are kept per run, because a version change is exactly what a trend should show."""

    cpu: str
    isa: tuple[str, ...]
    cores: int

    @cached_property
    def key(self) -> str:
        text = json.dumps([self.cpu, sorted(self.isa), self.cores])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def label(self) -> str:
        if self.isa == UNKNOWN_ISA:
            return f"{self.cpu} ({self.cores} cores, ISA flags not recorded)"
        isa = "+".join(f for f in ("avx2", "avx512f", "amx_tile") if f in self.isa) or "no avx2"
        return f"{self.cpu} ({self.cores} cores, {isa})"


@dataclass(frozen=True)
class Measurement:
    """One case's number from one run: its value, the value's interval (None where the source gave none), and for
    a gate the verdict and the threshold it was judged at."""

    case: str
    metric: str
    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None  # what the interval is over (rounds, calls, samples)
    verdict: str | None = None
    threshold_pct: float | None = None

    @property
    def failed(self) -> bool:
        return self.verdict == "regression"


@dataclass(frozen=True)
class RunRecord:
    kind: str
    recorded_at: datetime
    machine: Machine
    commit: str | None = None
    branch: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    passed: bool | None = None  # a gate's outcome; None where a run judges nothing
    summary: str = ""  # the run's own Markdown summary, shown when a point is clicked
    source: str = ""  # the file it was imported from, or the command that made it
    details: dict[str, Any] = field(default_factory=dict)  # the settings and anything else worth keeping
    measurements: tuple[Measurement, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown run kind {self.kind!r}: one of {', '.join(KINDS)}")
        if self.recorded_at.tzinfo is None:
            raise ValueError("a run's time must carry its time zone")


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


