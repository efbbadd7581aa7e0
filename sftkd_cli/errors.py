"""User-facing errors: one clear line, a non-zero exit code, no traceback."""

from __future__ import annotations

import os


class SftkdError(Exception):
    """An error the user can fix (bad file, key, value). The CLI prints it as one line, exit 2."""

    exit_code = 2


class RunInterrupted(SftkdError):
    """Training stopped on a signal after saving a checkpoint; `--resume` continues it."""

    exit_code = 130


def os_error_text(exc: OSError) -> str:
    """What went wrong, in words: the OS message, also for an OSError raised with only an errno."""
    if exc.strerror:
        return exc.strerror
    if exc.args and isinstance(exc.args[0], int):
        return os.strerror(exc.args[0])
    return str(exc)
