"""A recipe value checked against its key's type, and a value shown as a recipe writes it (for errors)."""

from __future__ import annotations

import json
import os
import typing
from typing import Any

import yaml

from sftkd_cli.errors import SftkdError
from sftkd_cli.safe_yaml import NOT_DECIMAL


def coerce_value(value: Any, kind: Any, where: str) -> Any:
    """Check `value` against a dataclass field type; allow int -> float and str -> list for lists."""
    origin = typing.get_origin(kind)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and type(value) is kind:
        return value
    if kind is str and isinstance(value, bool):  # `sft.batched=true` is read by YAML as a bool
        return "true" if value else "false"
    if kind is str and isinstance(value, (int, float)):  # e.g. `run.name=2024`
        return str(value)
    if kind is str and isinstance(value, os.PathLike):  # a Path from Python: `Setting("data.path", Path(...))`
        return os.fspath(value)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]  # `a, b` is [a, b]
        if isinstance(value, list):
            return [coerce_value(v, item, where) for v in value]
    if origin is dict and isinstance(value, dict):
        try:  # plain JSON data only: no self-references (asdict would recurse forever), no dates/bytes
            json.dumps(value)
        except (TypeError, ValueError):
            raise SftkdError(f"{where}: expected plain mapping data (numbers, strings, lists, mappings)") from None
        return dict(value)
    shown = shown_value(value)
    hint = " (numbers are decimal, without a leading 0)" if isinstance(value, str) and NOT_DECIMAL.fullmatch(value) else ""
    raise SftkdError(f"{where}: expected {EXPECTED.get(origin or kind, 'a value')}, got "
                     f"{shown if len(shown) <= 80 else shown[:77] + '...'}{hint}")


#: what a recipe key of each type takes, in a user's words
EXPECTED: dict[Any, str] = {int: "an integer", float: "a number", bool: "true or false", str: "text",
                             list: "a list such as [a, b]", dict: "a mapping such as {p: 2}"}


def shown_value(value: Any) -> str:
    """A value as a recipe would write it: 'maybe' quoted, [1, 2] and {p: 2} as YAML, None as
    'an empty value' (`epochs:` or `~`)."""
    if value is None or value == "":
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        try:
            return " ".join(yaml.safe_dump(value, default_flow_style=True, width=10**6).split())
        except yaml.YAMLError:
            pass
    return repr(value)
