"""`sftkd train-sft`: train a student-friendly teacher jointly with student branches."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sftkd_cli.cli import common
from sftkd_cli.choices import ARCH_TEXT, SR_TASK_TEXT, STUDENT, TEACHER
from sftkd_cli.cli.base import HelpCommand, examples


HELP = examples(
    "Train a student-friendly teacher (SFT-KD-Recon step 1) with N-1 shared student branches."
    "\n\nLoss = w_teacher*L1(teacher) + w_student*mean L1(branches) + w_imit*mean L1(branch, teacher) "
    "(sft.w_teacher, sft.w_student, sft.w_imit; default 1, 1, 1 as in the paper)."
    "\n\nThe run keeps the teacher (for `distill --teacher RUN`) and the student blocks "
    "(for `distill --init-from sft`)."
    f"\n\n{SR_TASK_TEXT}",
    "sftkd train-sft recipes/demo/sft.yaml",
    "sftkd train-sft --student D3C5 --data data/demo train.epochs=10",
    "sftkd train-sft --teacher VDSR12 --student VDSR4 --data data/sr data.task=sr",
)


def train_sft_command(
    args: common.args_argument("recipes/demo/sft.yaml") = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", metavar="ARCH", help=f"Teacher architecture (sft.teacher, default {TEACHER}): {ARCH_TEXT}.")] = None,
    student: Annotated[Optional[str], typer.Option("--student", metavar="ARCH", help=f"Student architecture with as many blocks, of a family that passes the same state between blocks (sft.student, default {STUDENT}).")] = None,
    data: common.DataOpt = None,
    acc: common.AccOpt = None,
    name: common.NameOpt = None,
    runs_dir: common.RunsDirOpt = None,
    epochs: common.EpochsOpt = None,
    device: common.DeviceOpt = None,
    threads: common.ThreadsOpt = None,
    amp: common.AmpOpt = None,
    resume: common.ResumeOpt = False,
    force: common.ForceOpt = False,
    print_recipe: common.PrintOpt = False,
) -> None:
    """Train a student-friendly teacher (see HELP)."""
    from sftkd_cli.config import check_sft_pair
    from sftkd_cli.training.sft import resolved_sft, train_sft

    recipe = common.build_recipe(
        "train-sft", args, data=data, acc=acc, name=name, runs_dir=runs_dir, epochs=epochs, device=device,
        threads=threads, amp=amp, checks=[check_sft_pair],
        own={"--teacher": ("sft.teacher", teacher), "--student": ("sft.student", student)},
    )  # the checks: --print-recipe too
    common.print_or_train(recipe, print_recipe, train_sft, resolved_sft, "teacher val L1", resume=resume, force=force)


def register(app: typer.Typer) -> None:
    app.command("train-sft", cls=HelpCommand, help=HELP)(train_sft_command)
