"""The messages between the gate and its workers (serving, memory, a side's pytest session): frozen types, one
JSON line each.

Standard library only: the gate imports it as optcv.gate.worker.protocol, each side's harness (which imports no
optcv module by name but its side's) relatively, and a pytest session by its path. A message's line names its type,
so a reply is decoded to the one type it is, and a field missing or unknown is an error at the boundary, not a
KeyError later.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CaseSpec:
    """One gated case: a model's prediction on a backend at a batch size and thread count, or its training step."""
    model: str
    kind: str  # "predict" or "train"
    backend: str  # "pytorch" for a training step
    batch: int
    threads: int
    declared: bool = False  # a user's declared model (its inputs come from its declaration)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.backend if self.kind == 'predict' else 'train'}/b{self.batch}/t{self.threads}"


@dataclass(frozen=True)
class Setup:
    """Load the inputs (name -> .npy path) and the side's built artifacts; set up `cases` (a memory worker: none)."""
    inputs: dict[str, str]
    artifacts: dict[str, Any]
    cases: tuple[CaseSpec, ...] = ()


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
    spec: CaseSpec
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
    ns: tuple[float, ...]  # per call, in ns: each call's, or each batch's mean (a pytest session's short calls)


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


# A side's pytest session (pytest_session.py) says what it collected and where each test is; it is asked for
# Time at a test's benchmark call and answers Timed, until it is told to Release the test.


@dataclass(frozen=True)
class Collected:
    nodes: dict[str, list[str]]  # each test of the coordinator's it will run, in order: its fixtures
    others: tuple[str, ...]  # benchmark tests of the same files that the coordinator did not name
    errors: dict[str, str]  # per file that did not collect, its error's last line


@dataclass(frozen=True)
class AtBenchmark:
    """The test has reached its benchmark call, and serves Time until released."""
    node: str


@dataclass(frozen=True)
class Release:
    """Let the test go on past its benchmark call (its assertions run on the side)."""


@dataclass(frozen=True)
class SideReport:
    """A phase of a test that failed or was skipped, or its call phase."""
    node: str
    when: str  # setup, call or teardown
    outcome: str  # passed, failed or skipped
    message: str


@dataclass(frozen=True)
class Finished:
    node: str


@dataclass(frozen=True)
class SessionEnd:
    pass


@dataclass(frozen=True)
class Fatal:
    """The session cannot serve at all (pytest-benchmark missing): a set-up error of the side."""
    message: str


Request = Setup | Time | Profile | MeasureMemory | Exit | Release
Reply = Ready | MemoryReady | Timed | Profiled | Footprint | Failed
SessionEvent = Collected | AtBenchmark | SideReport | Finished | SessionEnd | Fatal | Timed
MESSAGES: dict[str, type] = {kind.__name__: kind for kind in (
    Setup, Time, Profile, MeasureMemory, Exit, Release, Ready, MemoryReady, Timed, Profiled, Footprint, Failed,
    Collected, AtBenchmark, SideReport, Finished, SessionEnd, Fatal)}


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
    """JSON has no tuples: a field declared as one gets its list back as a tuple, so the message stays frozen;
    and a case spec inside a message is a CaseSpec again."""
    lists: dict[str, Any] = {f.name: tuple(getattr(message, f.name)) for f in dataclasses.fields(message)
                             if isinstance(getattr(message, f.name), list)}
    if isinstance(message, Setup):
        lists["cases"] = tuple(case_spec(c) for c in lists.get("cases", message.cases))
    if isinstance(message, MeasureMemory) and isinstance(message.spec, dict):
        lists["spec"] = case_spec(message.spec)
    return dataclasses.replace(message, **lists) if lists else message


def case_spec(data: dict[str, Any] | CaseSpec) -> CaseSpec:
    return data if isinstance(data, CaseSpec) else CaseSpec(**data)


def failure(exc: BaseException) -> Failed:
    return Failed(f"{type(exc).__name__}: {exc}")
