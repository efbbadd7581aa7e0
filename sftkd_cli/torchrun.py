"""Running under torchrun: how many processes it started (torch-free: the CLI asks before any command runs)."""

from __future__ import annotations

import os


def world_size() -> int:
    """The number of processes torchrun started this one among (WORLD_SIZE); 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def processes(number: int) -> str:
    """'1 process', '2 processes': a number of processes in a message."""
    return f"{number} process" + ("" if number == 1 else "es")


def started_with(number: int) -> str:
    """How to start `number` processes, in words: 'torchrun --nproc_per_node=2', or one without torchrun."""
    return f"torchrun --nproc_per_node={number}" if number > 1 else "one process (without torchrun)"
