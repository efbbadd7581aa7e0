"""This machine's memory: how much a new allocation can take.

`available_bytes()` is what memory-hungry choices are sized by (training's `data.cache`,
prepare-data's stacks kept between reading and writing): Linux's MemAvailable (/proc/meminfo:
free memory plus the page cache the kernel can drop), lowered to what a cgroup memory limit (a
container's) leaves; elsewhere the free pages `os.sysconf` reports; None where nothing says.
"""

from __future__ import annotations

import os
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

