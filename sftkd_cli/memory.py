"""This machine's memory: how much a new allocation can take, and giving a freed heap back.

`available_bytes()` is what memory-hungry choices are sized by (training's `data.cache`,
prepare-data's stacks kept between reading and writing): Linux's MemAvailable (/proc/meminfo:
free memory plus the page cache the kernel can drop), lowered to what a cgroup memory limit (a
container's) leaves; elsewhere the free pages `os.sysconf` reports; None where nothing says.

`release_heap()` hands memory the process has freed back to the system (glibc's
`malloc_trim(0)`). glibc keeps the freed blocks of its heap for later allocations, so a process
that allocates and frees many mid-sized arrays (evaluate, one volume after another) grows from
fragmentation alone. Nothing happens where the C library has no malloc_trim (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path

#: (limit, usage) files of this process's cgroup as a container sees it: cgroup v2, then v1. The
#: usage counts page cache too, so the room they leave is a low estimate (which errs on the safe side)
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_bytes() -> int | None:
    """Bytes of memory a new allocation can take without swapping or the OOM killer (see the module
    docstring); None where the system does not say."""
    found = _meminfo_available()
    if found is None:
        found = _sysconf_available()
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _first_int(limit_file), _first_int(usage_file)  # "max" (no limit) reads as None
        if limit is not None and usage is not None:
            left = max(0, limit - usage)
            found = left if found is None else min(found, left)
    return found


def _first_int(path: str) -> int | None:
    """The whole number a one-value file (/proc, /sys) begins with; None if absent or another word."""
    try:
        return int(Path(path).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _meminfo_available() -> int | None:
    """Linux's MemAvailable, in bytes (None on kernels older than 3.14 or other systems)."""
    try:
        lines = Path("/proc/meminfo").read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            words = value.split()
            return int(words[0]) * 1024 if words and words[0].isdigit() else None
    return None


def _sysconf_available() -> int | None:
    """Free physical memory from `os.sysconf` (no page cache counted), where the system has it."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # TypeError: Windows, where CDLL(None) is refused
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_heap() -> bool:
    """Give the heap's free memory back to the system (glibc `malloc_trim(0)`); whether it could.
    Never fails: where there is no malloc_trim it does nothing."""
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        trim(0)
    except Exception:  # a foreign function misbehaving must not stop an evaluation
        return False
    return True
