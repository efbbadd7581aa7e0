"""`sftkd train-teacher`: train one network with L1 (the teacher, or the plain student baseline)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sftkd_cli.cli import common
from sftkd_cli.choices import ARCH_LABELS, ARCH_TEXT, COMPLEX_PARAMS_TEXT, SR_TASK_TEXT, STUDENT, TEACHER
from sftkd_cli.cli.base import HelpCommand, examples


HELP = examples(
    f"Train one network ({ARCH_LABELS}) alone with L1 loss: the teacher ({TEACHER}) or the plain student "
    f"baseline ({STUDENT}).\n\n{SR_TASK_TEXT}",
    "sftkd train-teacher recipes/demo/teacher.yaml",
    "sftkd train-teacher --data data/demo --name demo-teacher train.epochs=10",
    "sftkd train-teacher --model D3C5 --data data/demo --name demo-student",
    "sftkd train-teacher --data data/demo-sr data.task=sr sft.teacher=VDSR12",
)


def train_teacher(
    args: common.args_argument("recipes/demo/teacher.yaml") = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="ARCH", help=f"Architecture (model.name; default sft.teacher, {TEACHER}): {ARCH_TEXT}; {COMPLEX_PARAMS_TEXT}. The run is the teacher when this is sft.teacher, else a student (run.role=teacher says otherwise).")] = None,
    data: common.DataOpt = None,
    acc: common.AccOpt = None,
    name: common.NameOpt = None,
    runs_dir: common.RunsDirOpt = None,
    epochs: common.EpochsOpt = None,
    device: common.DeviceOpt = None,
    threads: common.ThreadsOpt = None,
    amp: common.AmpOpt = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", metavar="RUN", help="Start from the weights of another run or checkpoint file (fine-tuning); without it: random weights.")] = None,
    resume: common.ResumeOpt = False,
    force: common.ForceOpt = False,
    print_recipe: common.PrintOpt = False,
) -> None:
    """Train one network with L1 loss (see HELP)."""
    from sftkd_cli.init_from import check_train_start
    from sftkd_cli.training.supervised import resolved_supervised, train_supervised

    recipe = common.build_recipe(
        "train-teacher", args, data=data, acc=acc, name=name, runs_dir=runs_dir, epochs=epochs, device=device,
        threads=threads, amp=amp, own={"--model": ("model.name", model)},
        checks=[lambda _recipe: check_train_start(init_from)],  # --print-recipe too
    )
    common.print_or_train(recipe, print_recipe, train_supervised, resolved_supervised, init_from=init_from, resume=resume, force=force)


def register(app: typer.Typer) -> None:
    app.command("train-teacher", cls=HelpCommand, help=HELP)(train_teacher)
