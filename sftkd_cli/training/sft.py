"""`train-sft`: the student-friendly teacher (SFT-KD-Recon, step 1).

The teacher T1..TN is trained jointly with N-1 student branches. Branch i (1-based) starts
from the teacher's data-consistent output after block i and runs the shared student blocks
S(i+1)..SN, each followed by data consistency. S1 is never used, so it is frozen.
Loss = w_teacher * L1(T, x) + w_student * mean_i L1(S_i, x) + w_imit * mean_i L1(S_i, T).
Nothing is detached: the branch losses reach the teacher blocks that feed them.

Efficiency: with `batched`, the branches that pass through a student block go through it as
ONE batch (branch states concatenated along the batch axis) instead of one call per branch.
That is meant for a GPU (fewer, larger kernels; not measured here); on a CPU `sftkd bench`
measured it slower than branch by branch on both CPU kinds it ran on (1.1-1.3x on an AVX-512
EPYC, 1.3x on an AVX2 one: activations of 16 samples fall out of cache), so `sft.batched: auto`
batches on CUDA only (`batched_branches`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from sftkd_cli.config import Recipe, check_sft_pair
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import CascadeNet, family_of
from sftkd_cli.runs import RunDir
from sftkd_cli.runtime import select_device
from sftkd_cli.training.engine import FitResult
from sftkd_cli.training.objectives import Batch, Objective
from sftkd_cli.training.resume import ResumePoint
from sftkd_cli.training.session import model_for, run_training, with_run


class StudentFriendly(Objective):
    """Teacher + shared student branches, trained together."""

    primary = "teacher"
    weights_section = "sft"
    uses_every_parameter = True  # every teacher block and S2..SN in each step (S1, in no branch, is frozen)

    def __init__(
        self,
        teacher: CascadeNet,
        student: CascadeNet,
        w_teacher: float = 1.0,
        w_student: float = 1.0,
        w_imit: float = 1.0,
        batched: bool = True,
    ) -> None:
        super().__init__()
        t_passes, s_passes = family_of(teacher.name).between_blocks, family_of(student.name).between_blocks
        if t_passes != s_passes:  # a student branch starts from the teacher's state after a block
            raise SftkdError(f"sft: {teacher.name} passes {t_passes} between its blocks, {student.name} passes "
                             f"{s_passes}; expected sft.teacher and sft.student whose blocks pass the same")
        if teacher.cascades != student.cascades:
            raise SftkdError(f"sft: {teacher.name} and {student.name} need the same number of cascades")
        if teacher.cascades < 2:
            raise SftkdError(f"sft: {teacher.name} has one cascade; SFT needs at least two")
        self.teacher, self.student = teacher, student
        self.w_teacher, self.w_student, self.w_imit = w_teacher, w_student, w_imit
        self.batched = batched
        student.blocks[0].requires_grad_(False)  # S1 is in no branch

    def branches(self, teacher_states: list[torch.Tensor], kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """All N-1 branch outputs stacked along a new first axis: (N-1, B, C, H, W), C the image channels."""
        n = self.teacher.cascades
        if not self.batched:
            outputs = []
            for start in range(1, n):
                x = teacher_states[start - 1]
                for j in range(start, n):
                    x = self.student.cascade(j, x, kspace, mask)
                outputs.append(x)
            return torch.stack(outputs)
        carry: torch.Tensor | None = None
        for j in range(1, n):  # student block S(j+1), 0-based index j
            fresh = teacher_states[j - 1]
            carry = fresh if carry is None else torch.cat([carry, fresh])
            repeats = carry.shape[0] // fresh.shape[0]
            carry = self.student.cascade(j, carry, _tile(kspace, repeats), _tile(mask, repeats))
        assert carry is not None
        return carry.view(n - 1, *teacher_states[-1].shape)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        zf, kspace, mask, target = batch["zf"], batch["kspace"], batch["mask"], batch["target"]
        states, x = [], zf
        for i in range(self.teacher.cascades):
            x = self.teacher.cascade(i, x, kspace, mask)
            states.append(x)
        teacher_out = states[-1]
        branch_out = self.branches(states, kspace, mask)
        parts = {
            "teacher": F.l1_loss(teacher_out, target),
            "student": F.l1_loss(branch_out, target.expand_as(branch_out)),
            "imit": F.l1_loss(branch_out, teacher_out.expand_as(branch_out)),
        }
        loss = self.w_teacher * parts["teacher"] + self.w_student * parts["student"] + self.w_imit * parts["imit"]
        return loss, parts

    def models(self) -> dict[str, CascadeNet]:
        return {"teacher": self.teacher, "student": self.student}

    def info(self) -> dict[str, Any]:
        return {"sft_weights": [self.w_teacher, self.w_student, self.w_imit]}


def _tile(x: torch.Tensor, repeats: int) -> torch.Tensor:
    return x if repeats == 1 or x.shape[0] == 1 else x.repeat(repeats, *([1] * (x.dim() - 1)))


def resolved_sft(recipe: Recipe) -> Recipe:
    """The recipe `train_sft` trains: run role and name filled in."""
    return with_run(recipe, "sft", f"{recipe.sft.teacher.upper()}-{recipe.sft.student.upper()}")


def train_sft(
    recipe: Recipe, *, resume: bool = False, force: bool = False, console: Console | None = None
) -> tuple[RunDir, FitResult]:
    """Train a student-friendly teacher into `runs/<name>` (teacher and student blocks saved).

    `console`: where the start line and epoch lines go (default: a rich Console on stdout, with
    the progress bar on stderr; `Console(quiet=True)` for none). Returns the run folder and the fit's summary."""
    check_sft_pair(recipe)  # as the command and a plan check it
    sft = recipe.sft
    recipe = resolved_sft(recipe)

    def make(data: dict[str, object], point: ResumePoint | None) -> StudentFriendly:  # the engine restores a resumed run's weights
        teacher, student = model_for(recipe, sft.teacher, data), model_for(recipe, sft.student, data)
        batched = batched_branches(sft.batched, select_device(recipe.train.device))
        return StudentFriendly(teacher, student, sft.w_teacher, sft.w_student, sft.w_imit, batched=batched)

    return run_training(recipe, make, resume=resume, force=force, console=console)


def batched_branches(setting: str, device: torch.device) -> bool:
    """`sft.batched`: true, false, or auto = batched on CUDA only (slower on CPUs, see the module docstring)."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")
