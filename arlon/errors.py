"""The one exception type for user mistakes: the CLI prints its message on one line, no traceback."""


class ArlonError(Exception):
    """A user mistake (a bad path, size, spec or file) with a message that says how to fix it."""


class Stopped(KeyboardInterrupt):
    """The user stopped a run: Ctrl-C (exit status 130) or SIGTERM (143), with what was kept."""

    def __init__(self, exit_code: int = 130, kept: str = ""):
        super().__init__(kept)
        self.exit_code, self.kept = exit_code, kept
