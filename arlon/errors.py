"""The one exception type for user mistakes: the CLI prints its message on one line, no traceback."""


class ArlonError(Exception):
    """A user mistake (a bad path, size, spec or file) with a message that says how to fix it."""
