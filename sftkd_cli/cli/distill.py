"""`sftkd distill`: train a student from a frozen teacher with a feature-KD method."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sftkd_cli.cli import common
from sftkd_cli.choices import ARCH_TEXT, DEFAULT_METHOD, INIT_RANDOM, JOINT, SR_TASK_TEXT
from sftkd_cli.cli.base import HelpCommand, examples
from sftkd_cli.distill.catalog import methods_help, taps_help


HELP = examples(
    "Distill a student from a frozen teacher (SFT-KD-Recon step 2)."
    "\n\nLoss = w_rec*L1(student, target) + w_kd*L_method + w_imit*L1(student, teacher) "
    "(distill.w_rec, distill.w_kd, distill.w_imit). Feature taps: distill.student_taps and "
    "distill.teacher_taps (names like c3.conv2; they cover the image, not the reference code's padded border)."
    f"\n\nDefault taps: {taps_help()}."
    "\n\nStd-KD distills from a train-teacher run; SFT-KD-Recon from a train-sft run, "
    "starting from its student blocks (--init-from sft)."
    f"\n\n{SR_TASK_TEXT}",
    "sftkd distill --teacher runs/demo-teacher --method at",
    "sftkd distill --teacher runs/demo-sft --method at --init-from sft",
    "sftkd distill recipes/demo/sft-kd-at.yaml",
)


def distill_command(
    args: common.args_argument("recipes/demo/std-kd-at.yaml") = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", "-t", metavar="RUN", help="Teacher run directory: a train-teacher run (Std-KD) or a train-sft run (SFT-KD).")] = None,
    student: Annotated[Optional[str], typer.Option("--student", metavar="ARCH", help=f"Student architecture (model.name), e.g. D3C5: {ARCH_TEXT}.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", metavar="NAME", help=f"KD method ({common.recipe_default('distill.method', DEFAULT_METHOD)}): {methods_help()}")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", metavar="FROM", help=f"Student start ({common.recipe_default('distill.init', INIT_RANDOM[-1])}): random, sft (the SFT teacher run's student blocks), or a run/checkpoint.")] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", metavar="NAME", help=f"Schedule ({common.recipe_default('distill.schedule', JOINT)}): joint (one stage, the paper) or two-stage (the feature loss alone for distill.stage1_epochs epochs, which two-stage needs set: at least 1, fewer than train.epochs; then L1 fine-tuning with a fresh Adam and LR schedule: the reference code).")] = None,
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
    """Distill a student from a frozen teacher (see HELP)."""
    from functools import partial

    from sftkd_cli.training.kd import check_distill, distill, resolved_distill

    recipe = common.build_recipe(
        "distill", args, data=data, acc=acc, name=name, runs_dir=runs_dir, epochs=epochs, device=device,
        threads=threads, amp=amp, checks=[partial(check_distill, resume=resume)],  # --print-recipe too
        own={"--teacher": ("distill.teacher_run", teacher), "--student": ("model.name", student),
             "--method": ("distill.method", method), "--init-from": ("distill.init", init_from),
             "--schedule": ("distill.schedule", schedule)},
    )
    common.print_or_train(recipe, print_recipe, distill, resolved_distill, resume=resume, force=force)


def register(app: typer.Typer) -> None:
    app.command("distill", cls=HelpCommand, help=HELP)(distill_command)
