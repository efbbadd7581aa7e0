"""Names a user gives sftkd, checked in one line: a run name (one folder name), a split name and a
device name; and choice words read in any case (`in_any_case`).

Light on purpose (torch only when a device name needs it): recipes and command options use them.
"""

from __future__ import annotations

import re
from collections.abc import Container

from sftkd_cli.errors import SftkdError

#: a run name is one folder name of at most this many bytes (UTF-8)
MAX_RUN_NAME = 200


def check_run_name(name: str, where: str, allow_empty: bool = False) -> None:
    """A run name is one plain folder name inside the runs folder: never empty (unless `allow_empty`:
    the command derives one), `.`, `..`, a path, hidden (`.x`), option-like (`-x`), or longer than
    MAX_RUN_NAME bytes."""
    if name == "" and allow_empty:
        return
    shown = repr(name) if len(name) <= 60 else repr(name[:57] + "...")
    if name in ("", ".", ".."):
        problem = "is not a folder name"
    elif any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains '/', '\\' or a control character (NUL, newline, ...)"
    elif name[0] == ".":
        problem = "starts with '.' (a hidden folder, which `runs/*` leaves out)"
    elif name[0] == "-":
        problem = "starts with '-' (commands given the run would read it as an option)"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_RUN_NAME:
        problem = f"is longer than {MAX_RUN_NAME} bytes"
    else:
        return
    raise SftkdError(f"{where} {shown} {problem}; expected one plain folder name (e.g. demo-teacher)")


#: a split name: one plain word (prepare-data writes train, val and test); it names RUN/eval-split-<split>/
_SPLIT = re.compile(r"[A-Za-z0-9_.-]+")


def check_split_name(name: object, where: str) -> None:
    """A split name is a plain name (`_SPLIT`, not `.` or `..`): it names an evaluation folder
    (eval-split-<split>/), so a path there would send the scores outside the run."""
    if isinstance(name, str) and _SPLIT.fullmatch(name) and name not in (".", ".."):
        return
    shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:57] + "...")
    raise SftkdError(f"{where} {shown} is not a plain name; expected letters, digits, '_', '.' or '-' "
                     "(e.g. train, val, test)")


#: a device name as sftkd writes it: auto, cpu, cuda, mps, cuda:N (check_device says which exist)
_DEVICE = re.compile(r"(auto|cpu|cuda|mps)(?::(0|[1-9]\d{0,3}))?")


class _DeviceNames(Container[str]):
    """The device names `_DEVICE` matches, as words for `in_any_case`."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _DEVICE.fullmatch(name) is not None


DEVICE_NAMES: Container[str] = _DeviceNames()


def in_any_case(value: str, words: Container[str]) -> str:
    """`value` as the word of `words` it spells in any case (`BF16` -> bf16, `CUDA:0` -> cuda:0);
    anything else as typed, for the error that refuses it."""
    return value.lower() if isinstance(value, str) and value.lower() in words else value


def check_device(name: str, where: str = "train.device") -> None:
    """The device must be auto, cpu, cuda, cuda:N (N below the number of GPUs when CUDA is present)
    or mps where torch reports it available; torch is imported only for mps and cuda:N."""
    expected = "expected auto, cpu, cuda or cuda:N"
    match = _DEVICE.fullmatch(name)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        shown = repr(name) if len(name) <= 40 else repr(name[:37] + "...")
        raise SftkdError(f"{where} {shown}: {expected}")
    if match.group(1) == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise SftkdError(f"{where} 'mps': not available on this machine; {expected}")
    if match.group(2) is not None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and int(match.group(2)) >= count:
            raise SftkdError(f"{where} {name!r}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
