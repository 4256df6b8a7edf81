"""The messages between the gate and its serving and memory workers: frozen types, one JSON line each.

Standard library only: the gate imports it as optcv.gate.worker.protocol, and each side's harness (which imports
no optcv module by name but its side's) relatively. A message's line names its type, so a reply is decoded to the
one type it is, and a field missing or unknown is an error at the boundary, not a KeyError later.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setup:
    """Load the inputs (name -> .npy path) and the side's built artifacts; set up `cases` (a memory worker: none)."""
    inputs: dict[str, str]
    artifacts: dict[str, Any]
    cases: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Time:
    """`calls` timed calls of `case`, each on its own clock."""
    case: str
    calls: int


@dataclass(frozen=True)
class Profile:
    """`calls` calls of `case` under its runtime's profiler."""
    case: str
    calls: int


@dataclass(frozen=True)
class MeasureMemory:
    """One case's resident memory in a forked child of its own, after `warmup` calls and over `calls` more."""
    spec: dict[str, Any]
    calls: int
    warmup: int


@dataclass(frozen=True)
class Exit:
    """Stop serving."""


@dataclass(frozen=True)
class Ready:
    """A serving worker's set-up: which optcv it imported, its libraries, its process and each case's settings."""
    optcv_file: str
    versions: dict[str, Any]
    pid: int
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryReady:
    pid: int
    threads: int


@dataclass(frozen=True)
class Timed:
    ns: tuple[int, ...]  # each call's duration


@dataclass(frozen=True)
class Profiled:
    ops_us_per_call: dict[str, float]
    wall_us_per_call: float
    outside_us_per_call: float  # the profiled call's time outside every operator (never below zero)


@dataclass(frozen=True)
class Footprint:
    peak_kib: float  # the peak resident memory the case added over its set-up, warm-up and calls
    after_setup_and_warmup_kib: float
    retained_kib_per_call: float
    allocated_bytes_per_call: float
    allocated_blocks_per_call: float


@dataclass(frozen=True)
class Failed:
    """What went wrong in the worker, as `Type: message`: the gate reports it as a set-up error of the side."""
    error: str


Request = Setup | Time | Profile | MeasureMemory | Exit
Reply = Ready | MemoryReady | Timed | Profiled | Footprint | Failed
MESSAGES: dict[str, type] = {kind.__name__: kind for kind in (Setup, Time, Profile, MeasureMemory, Exit, Ready,
                                                              MemoryReady, Timed, Profiled, Footprint, Failed)}


def encode(message: Request | Reply) -> str:
    """The message as one JSON line (no newline)."""
    return json.dumps({"type": type(message).__name__, **dataclasses.asdict(message)})


def decode(line: str | bytes) -> Any:
    """The message a line holds; ValueError when it is no message of this protocol."""
    data = json.loads(line)
    kind = MESSAGES.get(data.pop("type", None)) if isinstance(data, dict) else None
    if kind is None:
        raise ValueError(f"not a gate message: {str(line)[:80]!r}")
    try:
        values = {f.name: data.pop(f.name) for f in dataclasses.fields(kind) if f.name in data}
        message = kind(**values)
    except TypeError as exc:
        raise ValueError(f"a {kind.__name__} message: {exc}") from None
    if data:
        raise ValueError(f"a {kind.__name__} message has unknown fields {sorted(data)}")
    return _tuples(message)


def _tuples(message: Any) -> Any:
    """JSON has no tuples: a field declared as one gets its list back as a tuple, so the message stays frozen."""
    lists = {f.name: tuple(getattr(message, f.name)) for f in dataclasses.fields(message)
             if isinstance(getattr(message, f.name), list)}
    return dataclasses.replace(message, **lists) if lists else message


def failure(exc: BaseException) -> Failed:
    return Failed(f"{type(exc).__name__}: {exc}")
