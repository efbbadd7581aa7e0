"""`sftkd distill`: train a student from a frozen teacher with a feature-KD method."""

from __future__ import annotations

import typer

from sftkd_cli.cli import common
from sftkd_cli.cli.app import app


@app.command("distill")
def distill_command(
    args: list[str] = common.Args,
    teacher: str = typer.Option(None, "--teacher", "-t", help="Teacher run directory: a train-teacher run (Std-KD) or a train-sft run (SFT-KD)."),
    student: str = typer.Option(None, "--student", help="Student architecture (model.name), e.g. D3C5."),
    method: str = typer.Option(None, "--method", help="at, fitnets, cc, fsp, sp, pkt, nst, ft, or none (output imitation only)."),
    init_from: str = typer.Option(None, "--init-from", help="Student start: random, sft (the SFT teacher run's student blocks), or a run/checkpoint."),
    schedule: str = typer.Option(None, "--schedule", help="joint (one stage, the paper) or two-stage (feature loss, then L1 fine-tuning: the reference code)."),
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
    """Distill a student from a frozen teacher (SFT-KD-Recon step 2).

    Loss = w_rec*L1(student, target) + w_kd*L_method + w_imit*L1(student, teacher)
    (distill.w_rec, distill.w_kd, distill.w_imit). Feature taps: distill.student_taps /
    distill.teacher_taps (names like c3.conv2), defaults per method.

    Std-KD:  sftkd distill --teacher runs/demo-teacher-D5C5-4x --method at
    SFT-KD:  sftkd distill --teacher runs/demo-sft-D5C5-D3C5-4x --method at --init-from sft
    """
    from sftkd_cli.training.kd import distill

    recipe = common.build_recipe(
        args, data=data, acc=acc, name=name, runs_dir=runs_dir, epochs=epochs, device=device,
        threads=threads, amp=amp,
        **{"distill.teacher_run": teacher, "model.name": student, "distill.method": method,
           "distill.init": init_from, "distill.schedule": schedule},
    )
    common.print_or_train(recipe, print_recipe, distill, resume=resume, force=force)
