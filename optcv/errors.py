"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


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


class ParityFailure(AssertionError):
    """A backend predicts or computes something other than the reference backend, beyond its tolerance."""


class BaselineError(OptcvError):
    """The baseline is missing, unreadable or does not cover what was measured."""


class BaselineMissing(BaselineError):
    """The baseline file, or the entries this run needs, are not there."""


class BaselineOtherMachine(BaselineMissing):
    """The baseline holds no entry recorded on this machine (CPU model, ISA flags, cores)."""


class BaselineInvalid(BaselineError):
    """The baseline is there but unreadable, of another schema, or malformed."""
