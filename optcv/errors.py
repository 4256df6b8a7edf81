"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class OptcvError(Exception):
    """A problem the user can fix: bad input, missing data, a corrupt file.

    The message is one line that says what was wrong and how to fix it.
    """
