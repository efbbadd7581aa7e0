"""`sftkd train-sft`: train a student-friendly teacher jointly with student branches."""

from __future__ import annotations

import typer

from sftkd_cli.cli import common
from sftkd_cli.cli.app import HelpCommand, app, examples


HELP = examples(
    "Train a student-friendly teacher (SFT-KD-Recon step 1) with N-1 shared student branches."
    "\n\nLoss = w_teacher*L1(teacher) + w_student*mean L1(branches) + w_imit*mean L1(branch, teacher) "
    "(sft.w_teacher, sft.w_student, sft.w_imit; default 1, 1, 1 as in the paper)."
    "\n\nThe run keeps the teacher (for `distill --teacher RUN`) and the student blocks "
    "(for `distill --init-from sft`).",
    "sftkd train-sft recipes/demo/sft.yaml",
    "sftkd train-sft --student D3C5 --data data/demo train.epochs=10",
)


@app.command("train-sft", cls=HelpCommand, help=HELP)
def train_sft_command(
    args: list[str] = common.Args,
    teacher: str = typer.Option(None, "--teacher", metavar="DnCm", help="Teacher architecture (sft.teacher, default D5C5)."),
    student: str = typer.Option(None, "--student", metavar="DnCm", help="Student architecture with the same cascades (sft.student, default D3C5)."),
    data: str = common.DataOpt,
    acc: float = common.AccOpt,
    name: str = common.NameOpt,
    runs_dir: str = common.RunsDirOpt,
    epochs: int = common.EpochsOpt,
    device: str = common.DeviceOpt,
    threads: int = common.ThreadsOpt,
    amp: str = common.AmpOpt,
    resume: bool = common.ResumeOpt,
    force: bool = common.ForceOpt,
    print_recipe: bool = common.PrintOpt,
) -> None:
    """Train a student-friendly teacher (see HELP)."""
    from sftkd_cli.training.sft import train_sft

    recipe = common.build_recipe(
        args, data=data, acc=acc, name=name, runs_dir=runs_dir, epochs=epochs, device=device,
        threads=threads, amp=amp, **{"sft.teacher": teacher, "sft.student": student},
    )
    common.print_or_train(recipe, print_recipe, train_sft, "teacher val L1", resume=resume, force=force)
