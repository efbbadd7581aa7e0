"""User-facing errors: one clear line, a non-zero exit code, no traceback."""

from __future__ import annotations


class SftkdError(Exception):
    """An error the user can fix (bad file, key, value). The CLI prints it as one line, exit 2."""

    exit_code = 2


class RunInterrupted(SftkdError):
    """Training stopped on a signal after saving a checkpoint; `--resume` continues it."""

    exit_code = 130
