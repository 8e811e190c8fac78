"""User-facing errors: one clear line, a non-zero exit code, no traceback.

Raise :class:`UserError` for anything the user can fix (a missing file, a bad option, a broken
shard). The CLI prints ``error: <message>`` and exits with ``exit_code``; tests call the
functions and assert on the exception.
"""


class UserError(Exception):
    """An error caused by the input or invocation; its message names the file/field and the fix."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
