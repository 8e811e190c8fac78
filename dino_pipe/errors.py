"""User-facing errors: one clear line, a non-zero exit code, no traceback.

Raise :class:`UserError` for anything the user can fix (a missing file, a bad option, a broken
shard). The CLI prints ``error: <message>`` and exits with ``exit_code``; tests call the
functions and assert on the exception.
"""


import errno


class UserError(Exception):
    """An error caused by the input or invocation; its message names the file/field and the fix."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def os_error_message(e: OSError) -> str:
    """One line for an OSError (disk full, permission denied, ...): the path, the OS's reason, what to do."""
    where = f"{e.filename}: " if e.filename else ""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}{reason}; free some space (or choose another output folder) and rerun: finished work is kept"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{where}{reason}; check the permissions of this path (or choose another one)"
    if e.errno == errno.EROFS:
        return f"{where}{reason}; choose an output folder on a writable file system"
    return f"{where}{reason}"
