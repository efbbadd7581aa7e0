"""What `sftkd bench` runs: its parts (`--only`) and KD methods (`--methods`), checked before any work."""

from __future__ import annotations

from collections.abc import Sequence

from sftkd_cli.choices import BENCH_PARTS
from sftkd_cli.distill.methods import METHODS
from sftkd_cli.errors import SftkdError, listed_names


def check_parts(which: Sequence[str] | None) -> list[str]:
    """Validate `--only`: a subset of BENCH_PARTS (all when None or []), in any case, each item also a comma list."""
    parts = [w.lower() for w in _named(which, "which", "--only", BENCH_PARTS)]
    if not parts:
        return list(BENCH_PARTS)
    for part in parts:
        if part not in BENCH_PARTS:
            raise SftkdError(f"bench --only {part!r}: expected some of {','.join(BENCH_PARTS)}")
    return [p for p in BENCH_PARTS if p in parts]


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """Validate `--methods`: KD method names (all of them when None or []), in any case, each item also a comma list."""
    names = [m.lower() for m in _named(methods, "methods", "--methods", METHODS)]
    if not names:
        return list(METHODS)
    for name in names:
        if name not in METHODS:
            raise SftkdError(f"bench --methods {name!r}: expected some of {','.join(METHODS)}")
    return list(dict.fromkeys(names))


def _named(value: Sequence[str] | None, what: str, flag: str, choices: Sequence[str]) -> list[str]:
    """The names in `value` (`listed_names`; `what` names the parameter); items that hold none
    (`--only ,`) are refused, naming `flag`, rather than read as every choice."""
    names = listed_names(value, what)
    if value and not names:
        raise SftkdError(f"{flag} {','.join(map(str, value))!r}: no name given; expected some of {','.join(choices)}")
    return names
