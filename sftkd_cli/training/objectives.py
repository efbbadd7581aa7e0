"""Training objectives plugged into the one engine.

An objective is an `nn.Module` whose registered submodules are exactly what training updates
and checkpoints (model, student blocks, KD adapters). Its `forward(batch)` returns the total
loss and its named parts; `predict(batch)` returns the image that validation scores: the
`primary` network's reconstruction (`predictor()`).
A frozen teacher is held outside the module tree, so it is neither optimised nor saved.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli.models import CascadeNet
from sftkd_cli.runtime import Batch


def model_record(model: CascadeNet) -> dict[str, Any]:
    """A self-describing model entry for checkpoints: architecture plus weights (the live tensors,
    which the checkpoint writer copies before training changes them)."""
    return {**model.record(), "state": model.state_dict()}


class Objective(nn.Module):
    """Base class: what a training mode computes; the engine does the rest."""

    #: the name of the model `evaluate` scores by default
    primary: str = "model"

    #: whether every trained parameter gets a gradient in every step (then DistributedDataParallel
    #: skips its search for unused ones, a walk of the autograd graph per step); False unless known
    uses_every_parameter: bool = False

    #: the recipe section whose `w_*` keys weigh this objective's loss terms ("" for a plain L1
    #: loss): the hint of a nan/inf loss names them
    weights_section: str = ""

    #: what `info` stores in every checkpoint (none unless an objective sets it)
    facts: Mapping[str, Any] = MappingProxyType({})

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def predict(self, batch: Batch) -> torch.Tensor:
        """The image validation scores: the primary network's reconstruction of the batch."""
        return self.predictor()(batch["zf"], batch["kspace"], batch["mask"])

    def predictor(self) -> CascadeNet:
        """The network `predict` runs (`primary`; validation may replay it from CUDA graphs)."""
        return self.models()[self.primary]

    def models(self) -> dict[str, CascadeNet]:
        """The reconstruction networks this run produces, by role."""
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Hook for schedules that change with the epoch (two-stage distillation)."""

    def restarts(self) -> tuple[int, ...]:
        """Epochs at whose start the optimiser starts afresh: Adam's moments cleared and the LR
        back to train.lr, its StepLR counted from there (two-stage distillation's second stage,
        which the reference code trains as a new run). None by default."""
        return ()

    def stage(self, epoch: int) -> int | None:
        """The stage (1, 2) that `epoch` (0-based) trains in, for an objective whose loss changes
        with the epoch (two-stage distillation: its history rows and epoch lines say it); None."""
        return None

    def describe(self) -> str:
        """What defines the run besides its model and data, for the start line: here the weights
        it started from where they are not random ('' for none); distillation says more."""
        init = self.facts.get("init")
        return f"init {init}" if init and init != "random" else ""

    def last_batch_note(self, slices: int, per_process: int) -> str:
        """A note for the start line's reader when each epoch's last batch holds `slices` slices
        (fewer than train.batch_size) and the loss treats such a batch differently; '' by default.
        Raises SftkdError where the loss can do nothing with `per_process` training slices."""
        return ""

    def graph_key(self) -> Hashable:
        """What the training step's code depends on besides the batch's shapes (a CUDA graph is
        captured per key): nothing by default; an objective whose `forward` takes other branches
        after `begin_epoch` returns what decides them."""
        return ()

    def info(self) -> dict[str, Any]:
        """Extra facts stored in every checkpoint (e.g. which teacher a student learnt from, what
        the run started from): `facts`, set by an objective that has some."""
        return dict(self.facts)


class TeacherObjective(Objective):
    """An objective that runs a second, fixed network beside the trained one (the KD teacher).

    The teacher is held outside the module tree, so it is neither optimised nor saved, yet
    `.to(device)` and dtype casts move it with the objective.
    """

    teacher: CascadeNet

    def hold_teacher(self, teacher: CascadeNet) -> None:
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not in parameters() or state_dict()

    def _apply(self, fn: Callable, recurse: bool = True) -> "TeacherObjective":
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)
        return self


class Supervised(Objective):
    """Plain L1 training of one network against the fully sampled target (teacher or student)."""

    uses_every_parameter = True

    def __init__(self, model: CascadeNet, facts: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.facts = facts or {}  # what it started from

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.l1_loss(self.predict(batch), batch["target"])
        return loss, {"l1": loss}

    def models(self) -> dict[str, CascadeNet]:
        return {"model": self.model}
