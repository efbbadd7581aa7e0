"""Where a training run's weights start (`distill.init`, `train-teacher --init-from`): checked
before any work, the same for `--print-recipe` as for training."""

from __future__ import annotations

from pathlib import Path

from sftkd_cli.choices import INIT_RANDOM, INIT_SFT, INIT_WORDS
from sftkd_cli.errors import SftkdError

_CHECKPOINT = "a run directory or checkpoint file"
#: what distill.init (distill --init-from) accepts
DISTILL_INIT = f"{INIT_RANDOM[-1]} (fresh weights), {INIT_SFT} (the SFT teacher run's student blocks) or {_CHECKPOINT}"
#: what train-teacher --init-from accepts
TRAIN_INIT = f"{_CHECKPOINT} (leave --init-from out to start from random weights)"


def check_distill_init(value: str) -> None:
    """distill.init is one of its words or a run directory or checkpoint file."""
    if value not in INIT_WORDS:
        check_start(value, "distill.init (--init-from)", DISTILL_INIT)


def check_start(value: str, name: str, expected: str = TRAIN_INIT) -> None:
    """`value` is a run directory or checkpoint file; otherwise one line naming `name` and what
    it accepts (`expected`)."""
    from sftkd_cli.checkpoints import resolve_checkpoint

    if not Path(value).exists():
        raise SftkdError(f"{name} {value!r}: expected {expected}; there is no such file or folder")
    resolve_checkpoint(value)  # a folder that is no run, or a run without a checkpoint yet: said there
