"""Readers of single plan-file values: each checks one YAML value's type and names where it sits
in the plan (`where`) when it is wrong, so that every plan error is one line pointing at its key."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftkd_cli.choices import METRIC_NAMES
from sftkd_cli.errors import SftkdError, did_you_mean


def as_mapping(value: Any, where: str, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """`value` as a mapping (None = empty); unknown keys are an error naming the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SftkdError(f"{where}: expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise SftkdError(f"{where}: unknown key {key!r}{did_you_mean(key, allowed, list_otherwise=True)}")
    return dict(value)


def as_text(value: Any, where: str, optional: bool = True) -> str | None:
    """A string (YAML numbers are taken as their text); None when absent and `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise SftkdError(f"{where}: expected a string, got {value!r}")
    return str(value)


def as_path(text: str) -> Path:
    """A plan's path: a leading `~` is the home folder, as in a shell."""
    return Path(os.path.expanduser(text))


def check_choice(value: str, choices: Sequence[str], where: str, what: str) -> None:
    """`value` must be one of `choices`; else an error naming `where` and saying it is an unknown
    `what` (metric, layout, ...), with the closest choice."""
    if value not in choices:
        raise SftkdError(f"{where}: unknown {what} {value!r}{did_you_mean(value, choices, list_otherwise=True)}")


def as_metric_names(value: Any, where: str) -> tuple[str, ...]:
    """A list of metric names, each one evaluate scores (METRIC_NAMES)."""
    names = as_names(value, where)
    for name in names:
        check_choice(name, METRIC_NAMES, where, "metric")
    return names


def as_names(value: Any, where: str) -> tuple[str, ...]:
    """A list of strings (a single string is a list of one; None is empty)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SftkdError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)
