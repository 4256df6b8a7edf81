"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the typed failures."""

from collections.abc import Sequence
from typing import Any


class OptcvError(Exception):
    """A problem the user can fix: bad input, missing data, a corrupt file.

    The message is one line that says what was wrong and how to fix it. The CLI exits with `exit_code`:
    2 when the input was refused, 1 when the work ran and failed.
    """

    exit_code = 2


class BackendCannotRun(OptcvError):
    """A runtime has no kernel for what a model does (an operator, or an operator at the model's dtype): that
    backend is unavailable for that model, and the other backends can still run it."""

    def __init__(self, backend: str, model: str, reason: str):
        self.backend, self.model, self.reason = backend, model, reason
        super().__init__(f"{backend} cannot run {model}: {reason}; drop {backend} from its backends")


class MissingDependency(OptcvError):
    """An optional package or program that the work needs is not installed; the message says what to install."""

    def __init__(self, what: str, needs: str, install: str):
        self.what, self.needs, self.install = what, needs, install
        super().__init__(f"{what} needs {needs}, not installed here: {install}")


# optcv's optional Python packages, by the top-level module a missing one fails to import as: (what it is, its extra).
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "psycopg": ("psycopg (PostgreSQL's driver)", "pip install 'optcv[postgres]'"),
    "openvino": ("OpenVINO", "pip install 'optcv[openvino]'"),
    "pytest_benchmark": ("pytest-benchmark", "pip install 'optcv[pytest]'"),
}


def missing_optional_module(exc: BaseException, what: str) -> MissingDependency | None:
    """The one-line error for an ImportError of one of optcv's optional packages (also when a library re-raised it
    as its own ImportError); None for any other import error, which is a bug to show in full."""
    while exc is not None:
        name = getattr(exc, "name", None) or ""
        if isinstance(exc, ImportError) and name.split(".")[0] in OPTIONAL_MODULES:
            needs, install = OPTIONAL_MODULES[name.split(".")[0]]
            return MissingDependency(what, needs, install)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def require_at_least_one(settings: object, *names: str) -> None:
    """Refuse a config whose named whole-number fields (None allowed: "all") are below 1, naming the field."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise OptcvError(f"{name.replace('_', '-')} must be at least 1, got {value}")


def first_line(exc: BaseException) -> str:
    """An exception's message reduced to its first line, or its type's name when it has no message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class SpeedRegression(AssertionError):
    """Measured code got slower than a gate allows."""


class PerformanceRegression(SpeedRegression):
    """A gated case got slower (or larger, or did more work) beyond its threshold; carries the typed findings
    (optcv.gate.verdict's CaseFinding and MeasureFinding)."""

    def __init__(self, findings: Sequence[Any]):
        self.findings = list(findings)
        super().__init__("; ".join(f"{f.case}{_measure_label(f)} {f.change_pct:+.1f} % (interval {f.ci_low_pct:+.1f} … "
                                   f"{f.ci_high_pct:+.1f} %, threshold {f.threshold_pct:g} %)" for f in findings))


def _measure_label(finding: Any) -> str:
    measure = getattr(finding, "measure", None)  # a memory or instruction finding; a time finding has none
    return f" {measure}" if measure else ""


class ParityFailure(AssertionError):
    """A backend predicts or computes something other than the reference backend, beyond its tolerance."""


class GateSetupError(OptcvError):
    """The gate could not be set up: a revision, an interpreter, a worker or an artifact failed."""


class BaselineError(OptcvError):
    """The baseline is missing, unreadable or does not cover what was measured."""


class BaselineMissing(BaselineError):
    """The baseline file, or the entries this run needs, are not there."""


class BaselineOtherMachine(BaselineMissing):
    """The baseline holds no entry recorded on this machine (CPU model, ISA flags, cores)."""


class BaselineInvalid(BaselineError):
    """The baseline is there but unreadable, of another schema, or malformed."""
