"""Running under torchrun: how many processes it started, and which commands run in several
(torch-free: the CLI asks before any command runs)."""

from __future__ import annotations

import os

from sftkd_cli.errors import SftkdError

#: the commands that run in several processes under torchrun (DistributedDataParallel training);
#: any other would run once in each, all doing the same work and writing the same files
DISTRIBUTED_COMMANDS = ("train-teacher", "train-sft", "distill")


def world_size() -> int:
    """The number of processes torchrun started this one among (WORLD_SIZE); 1 without torchrun.
    A value that is not a positive whole number (set by hand or by another launcher) is refused."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(text)
    except ValueError:
        world = 0
    if world < 1:
        raise SftkdError(f"environment variable WORLD_SIZE={text!r}: expected a whole number of processes >= 1 "
                         "(torchrun sets it; unset it to run in one process)")
    return world


def processes(number: int) -> str:
    """'1 process', '2 processes': a number of processes in a message."""
    return f"{number} process" + ("" if number == 1 else "es")


def started_with(number: int) -> str:
    """How to start `number` processes, in words: 'torchrun --nproc_per_node=2', or one without torchrun."""
    return f"torchrun --nproc_per_node={number}" if number > 1 else "one process (without torchrun)"


def check_command(name: str) -> None:
    """Refuse, in one line (printed by rank 0), the command `name` under torchrun with several
    processes unless it is one of DISTRIBUTED_COMMANDS."""
    world = world_size()
    if world > 1 and name not in DISTRIBUTED_COMMANDS:
        *first, last = DISTRIBUTED_COMMANDS
        error = SftkdError(f"sftkd {name} runs in one process, but torchrun started {processes(world)} "
                           f"(WORLD_SIZE={world}); only {', '.join(first)} and {last} train in several: "
                           f"run sftkd {name} without torchrun")
        error.quiet = os.environ.get("RANK", "0") != "0"
        raise error
