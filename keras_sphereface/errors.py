"""User-facing errors.

A :class:`UserInputError` is bad input a user can fix (a missing file, a malformed line,
a value out of range). The CLI prints its message and exits with status 2, without a
traceback. Messages follow the keras-hub style: what was expected, what was received, and
the file or line it came from.
"""


class UserInputError(ValueError):
    """Bad input from the user: printed by the CLI without a traceback (exit code 2)."""
