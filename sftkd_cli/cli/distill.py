"""`sftkd distill`: train a student from a frozen teacher with a feature-KD method."""

from __future__ import annotations

import typer

from sftkd_cli.cli import common
from sftkd_cli.cli.app import HelpCommand, app, examples
from sftkd_cli.distill.catalog import methods_help


HELP = examples(
    "Distill a student from a frozen teacher (SFT-KD-Recon step 2)."
    "\n\nLoss = w_rec*L1(student, target) + w_kd*L_method + w_imit*L1(student, teacher) "
    "(distill.w_rec, distill.w_kd, distill.w_imit). Feature taps: distill.student_taps and "
    "distill.teacher_taps (names like c3.conv2), defaults per method."
    "\n\nStd-KD distills from a train-teacher run; SFT-KD-Recon from a train-sft run, "
    "starting from its student blocks (--init-from sft).",
    "sftkd distill --teacher runs/demo-teacher --method at",
    "sftkd distill --teacher runs/demo-sft --method at --init-from sft",
    "sftkd distill recipes/demo/sft-kd-at.yaml",
)


@app.command("distill", cls=HelpCommand, help=HELP)
def distill_command(
    args: list[str] = common.Args,
    teacher: str = typer.Option(None, "--teacher", "-t", metavar="RUN", help="Teacher run directory: a train-teacher run (Std-KD) or a train-sft run (SFT-KD)."),
    student: str = typer.Option(None, "--student", metavar="DnCm", help="Student architecture (model.name), e.g. D3C5."),
    method: str = typer.Option(None, "--method", metavar="NAME", help=methods_help()),
    init_from: str = typer.Option(None, "--init-from", metavar="FROM", help="Student start: random, sft (the SFT teacher run's student blocks), or a run/checkpoint."),
    schedule: str = typer.Option(None, "--schedule", metavar="NAME", help="joint (one stage, the paper) or two-stage (feature loss, then L1 fine-tuning: the reference code)."),
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
    """Distill a student from a frozen teacher (see HELP)."""
    from sftkd_cli.training.kd import distill

    recipe = common.build_recipe(
        args, data=data, acc=acc, name=name, runs_dir=runs_dir, epochs=epochs, device=device,
        threads=threads, amp=amp,
        **{"distill.teacher_run": teacher, "model.name": student, "distill.method": method,
           "distill.init": init_from, "distill.schedule": schedule},
    )
    common.print_or_train(recipe, print_recipe, distill, resume=resume, force=force)
