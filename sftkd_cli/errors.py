"""User-facing errors: one clear line, a non-zero exit code, no traceback."""

from __future__ import annotations

import difflib
import os
import signal
from collections.abc import Iterable, Sequence


class SftkdError(Exception):
    """An error the user can fix (bad file, key, value). The CLI prints it as one line, exit 2."""

    exit_code = 2
    #: True where another process says it (under torchrun, rank 0 for all): the CLI only exits
    quiet = False


class RecipeValueError(SftkdError):
    """A recipe value refused by a check across keys (`config.validate`), with the `keys` it names:
    whoever knows where each value came from (file, override, option) says so (`config.naming_origin`)."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


def exit_status(signum: int) -> int:
    """The exit status of work stopped by signal `signum`, as shells report a death by it: 130
    after Ctrl-C, 143 after SIGTERM (so that a scheduler that sent SIGTERM sees it)."""
    return 128 + int(signum)


class RunInterrupted(SftkdError):
    """Work stopped on a signal (Ctrl-C, SIGTERM) with what was saved kept: training after saving
    a checkpoint (`--resume` continues it), prepare-data with its work kept to resume (`PrepareInterrupted`),
    export with nothing written. Whoever runs several steps (a plan) stops on it, not goes on.
    It exits with `exit_status(signum)`."""

    exit_code = 130

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum, self.exit_code = int(signum), exit_status(signum)


def os_error_text(exc: OSError) -> str:
    """What went wrong, in words: the OS message, also for an OSError raised with only an errno."""
    if exc.strerror:
        return exc.strerror
    if exc.args and isinstance(exc.args[0], int):
        return os.strerror(exc.args[0])
    return str(exc)


def counted(number: int, noun: str, plural: str = "") -> str:
    """'1 row', '2 rows' ('1 process', '2 processes' with `plural`): a count in a message."""
    return f"{number} " + (noun if number == 1 else plural or noun + "s")


def sizes_listed(named: Iterable[tuple[str, tuple[int, int]]]) -> tuple[str, tuple[int, int]]:
    """Files of different (H, W) sizes in words, one file named per size, the commonest size first
    ('16x16 (m0.nii.gz and 2 others), 20x16 (m3.nii.gz)'), and that commonest size (the first
    seen of equally common ones): the odd file stands out, however many files share a size."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for name, size in named:
        by_size.setdefault((int(size[0]), int(size[1])), []).append(name)
    order = sorted(by_size, key=lambda size: -len(by_size[size]))  # stable: equally common in order seen
    words = [f"{h}x{w} ({by_size[(h, w)][0]}" + (f" and {counted(len(by_size[(h, w)]) - 1, 'other')})"
                                               if len(by_size[(h, w)]) > 1 else ")") for h, w in order]
    return ", ".join(words), order[0]


def did_you_mean(word: object, choices: Iterable[str], *, prefix: str = "", quoted: bool = False,
                 list_otherwise: bool = False) -> str:
    """'; did you mean X?' for the closest of `choices` to `word` (X written `prefix`X, in quotes
    when `quoted`), else '; expected one of A, B' (also prefixed) with `list_otherwise`, else ''.

    The one suggestion helper behind every "unknown name" error (recipe keys, plan keys, KD
    methods), so that they all read alike.
    """
    options = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    if close:
        shown = f"{prefix}{close[0]}"
        return f"; did you mean {shown!r}?" if quoted else f"; did you mean {shown}?"
    return f"; expected one of {', '.join(prefix + o for o in options)}" if list_otherwise and options else ""


def listed_names(value: Sequence[str] | None, what: str) -> list[str]:
    """Names given as a list (from Python, or a repeatable option), each item also a comma list
    ('kd,sft'), blanks dropped; None is []. A bare string is refused: it would be read letter by
    letter (`what` names the parameter in the error)."""
    if isinstance(value, str):
        raise SftkdError(f"{what} {value!r}: expected a list of names, e.g. [{value!r}], not a string")
    return [name.strip() for item in value or [] for name in str(item).split(",") if name.strip()]


def names_shown(names: Sequence[str], shown: int = 8) -> str:
    """The first `shown` of `names` and how many more ('a, b, c and 5 more'): the one way an error
    or a display lists names that may be many (a dataset's volumes, waiting stages)."""
    rest = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {rest} more" if rest > 0 else "")
