"""Where a training run's weights start (`distill.init`, `train-teacher --init-from`): checked
before any work, the same for `--print-recipe` as for training."""

from __future__ import annotations

from pathlib import Path

from sftkd_cli.choices import INIT_RANDOM, INIT_SFT, INIT_WORDS
from sftkd_cli.errors import SftkdError

#: what distill.init (distill --init-from) accepts
DISTILL_INIT = (f"; expected {INIT_RANDOM[-1]} (fresh weights), {INIT_SFT} (the SFT teacher run's student blocks) "
                "or a run directory or checkpoint file")
#: what train-teacher --init-from is without a run or checkpoint
TRAIN_INIT = " (leave --init-from out to start from random weights)"


def check_distill_init(value: str) -> None:
    """distill.init is one of its words or a run directory or checkpoint file."""
    if value not in INIT_WORDS:
        check_start(value, "distill.init (--init-from)", DISTILL_INIT)


def check_train_start(init_from: str | None) -> None:
    """train-teacher's start (`init_from`, --init-from): None or '' is random weights, anything else
    a run directory or checkpoint file (`check_start`)."""
    if init_from:
        check_start(init_from, "--init-from")


def check_start(value: str, name: str, hint: str = TRAIN_INIT) -> None:
    """`value` is a run directory or checkpoint file; otherwise one line naming `name`, ending
    with `hint` (what else it accepts)."""
    from sftkd_cli.checkpoints import resolve_checkpoint

    if not Path(value).exists():
        raise SftkdError(f"{name} {value!r}: no such run directory or checkpoint file{hint}")
    resolve_checkpoint(value)  # a folder that is no run, or a run without a checkpoint yet: said there
