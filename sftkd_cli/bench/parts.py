"""What `sftkd bench` runs: its parts (`--only`) and KD methods (`--methods`), checked before any work."""

from __future__ import annotations

from collections.abc import Sequence

from sftkd_cli.choices import BENCH_PARTS
from sftkd_cli.distill.methods import METHODS
from sftkd_cli.errors import SftkdError, listed_names


def check_parts(which: Sequence[str] | None) -> list[str]:
    """Validate `--only`: a subset of BENCH_PARTS (all when None or []), in any case, each item also a comma list."""
    parts = _chosen(which, "which", "--only", BENCH_PARTS)
    return [p for p in BENCH_PARTS if p in parts] if parts else list(BENCH_PARTS)


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """Validate `--methods`: KD method names (all of them when None or []), in any case, each item also a comma list."""
    names = _chosen(methods, "methods", "--methods", tuple(METHODS))
    return list(dict.fromkeys(names)) if names else list(METHODS)


def _chosen(value: Sequence[str] | None, what: str, flag: str, choices: Sequence[str]) -> list[str]:
    """The names in `value` (`listed_names`; `what` names the parameter), lower-cased, each one of
    `choices`; items that hold none (`--only ,`) are refused, naming `flag`, rather than read as
    every choice."""
    names = [name.lower() for name in listed_names(value, what)]
    if value and not names:
        raise SftkdError(f"bench {flag} {','.join(map(str, value))!r}: no name given; expected some of {','.join(choices)}")
    for name in names:
        if name not in choices:
            raise SftkdError(f"bench {flag} {name!r}: expected some of {','.join(choices)}")
    return names
