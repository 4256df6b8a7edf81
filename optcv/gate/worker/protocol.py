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
from dataclasses import dataclass
from typing import Any, TypeVar

M = TypeVar("M")


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
class ReferenceRecipe:
    """How a side builds one of optcv's reference models with its own code: the architecture and its settings,
    the training run, and the int8 twin's quantisation settings where an int8 case needs it."""
    arch: str
    config: dict[str, Any]
    optimizer: str
    lr: float | None  # None: the optimiser's own default
    batch_size: int
    seed: int
    epochs: int
    train_images: int
    int8: dict[str, Any] | None = None


@dataclass(frozen=True)
class DeclaredRecipe:
    """A user's declared model: each side reads its declaration from its own tree, built for `backends`."""
    declared: str
    declarations: str | None
    backends: tuple[str, ...] = ()


Recipe = ReferenceRecipe | DeclaredRecipe


@dataclass(frozen=True)
class Build:
    """Build (or take from the cache) every model of `models` with the side's code."""
    models: dict[str, Recipe]
    data_dir: str | None
    cache_dir: str
    tree: str


@dataclass(frozen=True)
class ReferenceModel:
    checkpoint: str
    onnx: str


@dataclass(frozen=True)
class DeclaredModelFiles:
    """A declared model as a side built it: its recipe, where it was read and cached, and its ONNX export."""
    declared: str
    declarations: str | None
    backends: tuple[str, ...]
    tree: str
    cache_dir: str
    onnx: str


@dataclass(frozen=True)
class Built:
    """A side's built models, and what it built them with."""
    models: dict[str, ReferenceModel | DeclaredModelFiles]
    code_hash: str
    versions: dict[str, Any]
    optcv_file: str


@dataclass(frozen=True)
class Setup:
    """Load the inputs (name -> .npy path) and the side's built artifacts; set up `cases` (a memory worker: none)."""
    inputs: dict[str, str]
    artifacts: Built
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
class CountInstructions:
    """Under callgrind: per case, set up and warm up (`warmup_calls`), then count its calls, as many as its
    arithmetic allows (`counted_macs` over the case's multiply-accumulates, between `min_calls` and `max_calls`);
    a case whose call takes longer than `max_warmup_s` under valgrind is left out. `library` is the client of
    callgrind's start and stop requests."""
    inputs: dict[str, str]
    artifacts: Built
    cases: tuple[CaseSpec, ...]
    library: str
    max_calls: int
    min_calls: int
    counted_macs: int
    max_warmup_s: float
    warmup_calls: int


@dataclass(frozen=True)
class Counted:
    """Per case, the calls counted (dumped under its name), and how long its warm-up and whole case took."""
    calls: dict[str, int]
    warmup_s: dict[str, float]
    case_s: dict[str, float]
    cpu_capability: str | None


@dataclass(frozen=True)
class Exit:
    """Stop serving."""


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
    calls: int = 0  # the calls profiled, where fewer than asked (0: as asked)


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


Request = Build | Setup | Time | Profile | MeasureMemory | CountInstructions | Exit | Release
Reply = Built | MemoryReady | Timed | Profiled | Footprint | Counted | Failed
SessionEvent = Collected | AtBenchmark | SideReport | Finished | SessionEnd | Fatal | Timed
Message = Request | Reply | SessionEvent
MESSAGES: dict[str, type] = {kind.__name__: kind for kind in (
    Build, Built, Setup, Time, Profile, MeasureMemory, CountInstructions, Exit, Release, MemoryReady, Timed,
    Profiled, Footprint, Counted, Failed, Collected, AtBenchmark, SideReport, Finished, SessionEnd, Fatal)}


def encode(message: Message) -> str:
    """The message as one JSON line (no newline)."""
    return json.dumps({"type": type(message).__name__, **dataclasses.asdict(message)})


def decode(line: str | bytes) -> Any:  # a Message; Any so that each reader narrows it to what it expects
    """The message a line holds; ValueError when it is no message of this protocol."""
    data = json.loads(line)
    kind = MESSAGES.get(data.pop("type", None)) if isinstance(data, dict) else None
    if kind is None:
        raise ValueError(f"not a gate message: {str(line)[:80]!r}")
    return from_data(kind, data)


def from_data(kind: type[M], data: dict[str, Any]) -> M:
    """A `kind` from its fields as JSON holds them: nested messages and tuples rebuilt, so it stays frozen."""
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    if set(data) - names:
        raise ValueError(f"a {kind.__name__} message has unknown fields {sorted(set(data) - names)}")
    nested = _NESTED.get(kind, {})
    try:
        values = {name: nested[name](value) if name in nested else _tuple(value) for name, value in data.items()}
        return kind(**values)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"a {kind.__name__} message: {exc}") from None


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def case_spec(data: dict[str, Any] | CaseSpec) -> CaseSpec:
    return data if isinstance(data, CaseSpec) else from_data(CaseSpec, dict(data))


def recipe(data: dict[str, Any] | Recipe) -> Recipe:
    return _declared_or_reference(data, DeclaredRecipe, ReferenceRecipe)


def built_model(data: dict[str, Any] | ReferenceModel | DeclaredModelFiles) -> ReferenceModel | DeclaredModelFiles:
    return _declared_or_reference(data, DeclaredModelFiles, ReferenceModel)


def _declared_or_reference(data: Any, declared: type, reference: type) -> Any:
    """A declared model's message (it names its declaration) or a reference model's, from its fields."""
    if isinstance(data, declared | reference):
        return data
    return from_data(declared if "declared" in data else reference, dict(data))


def built(data: dict[str, Any] | Built) -> Built:
    return data if isinstance(data, Built) else from_data(Built, dict(data))


_NESTED: dict[type, dict[str, Any]] = {
    Setup: {"cases": lambda v: tuple(map(case_spec, v)), "artifacts": built},
    MeasureMemory: {"spec": case_spec},
    CountInstructions: {"cases": lambda v: tuple(map(case_spec, v)), "artifacts": built},
    Build: {"models": lambda v: {name: recipe(r) for name, r in v.items()}},
    Built: {"models": lambda v: {name: built_model(m) for name, m in v.items()}},
}


def failure(exc: BaseException) -> Failed:
    return Failed(f"{type(exc).__name__}: {exc}")
