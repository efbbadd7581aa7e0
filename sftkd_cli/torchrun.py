"""Running under torchrun: how many processes it started, and which commands run in several
(torch-free: the CLI asks before any command runs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sftkd_cli.choices import TRAINING_COMMANDS
from sftkd_cli.errors import SftkdError, counted

#: the commands that run in several processes under torchrun (DistributedDataParallel training);
#: any other would run once in each, all doing the same work and writing the same files
DISTRIBUTED_COMMANDS: tuple[str, ...] = tuple(TRAINING_COMMANDS)


def world_size() -> int:
    """The number of processes torchrun started this one among (WORLD_SIZE); 1 without torchrun.
    Training refuses a value that is not a positive whole number (set by hand or by another
    launcher), since it would start a process group on it."""
    text = os.environ.get("WORLD_SIZE", "1")
    world = _whole(text)
    if world is None or world < 1:
        raise SftkdError(f"environment variable WORLD_SIZE={text!r}: expected a whole number of processes >= 1 "
                         "(torchrun sets it; unset it to run in one process)")
    return world


def local_processes(world: int) -> int:
    """How many of the `world` processes run on this machine (LOCAL_WORLD_SIZE; `world` where unset)."""
    return _whole(os.environ.get("LOCAL_WORLD_SIZE", "")) or world


def processes(number: int) -> str:
    """'1 process', '2 processes': a number of processes in a message."""
    return counted(number, "process", "processes")


def started_with(number: int) -> str:
    """How to start `number` processes, in words: 'torchrun --nproc_per_node=2', or one without torchrun."""
    return f"torchrun --nproc_per_node={number}" if number > 1 else "one process (without torchrun)"


def is_main_process() -> bool:
    """Whether this is rank 0 of a torchrun, or no torchrun at all (RANK unset): the process that
    prints an error every process would print alike."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def said_by_rank_0() -> Iterator[None]:
    """Errors that every process of a torchrun meets alike (the recipe, the data, a resume check,
    all read before the processes part) are printed by rank 0 alone, not once per process."""
    try:
        yield
    except SftkdError as exc:
        exc.quiet = exc.quiet or not is_main_process()
        raise


def check_command(name: str) -> None:
    """Refuse, in one line (printed by rank 0), the command `name` under torchrun with several
    processes unless it is one of DISTRIBUTED_COMMANDS. A WORLD_SIZE that is not a number is no
    torchrun's: other commands ignore it, as they did before they asked (training refuses it)."""
    world = _whole(os.environ.get("WORLD_SIZE", "1")) or 1
    if world > 1 and name not in DISTRIBUTED_COMMANDS:
        *first, last = DISTRIBUTED_COMMANDS
        with said_by_rank_0():
            raise SftkdError(f"sftkd {name} runs in one process, but torchrun started {processes(world)} "
                             f"(WORLD_SIZE={world}); only {', '.join(first)} and {last} train in several: "
                             f"run sftkd {name} without torchrun")


def _whole(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
