"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class OptcvError(Exception):
    """A problem the user can fix: bad input, missing data, a corrupt file.

    The message is one line that says what was wrong and how to fix it.
    """


def first_line(exc: BaseException) -> str:
    """An exception's message reduced to its first line, or its type's name when it has no message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class SpeedRegression(AssertionError):
    """Measured code got slower than a gate allows."""


class ParityFailure(AssertionError):
    """A backend predicts or computes something other than the reference backend, beyond its tolerance."""
