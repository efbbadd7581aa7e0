"""`sftkd train-teacher`: train one DnCm with L1 (the teacher, or the plain student baseline)."""

from __future__ import annotations

import typer

from sftkd_cli.cli import common
from sftkd_cli.cli.app import HelpCommand, app, examples


HELP = examples(
    "Train one DC-CNN alone with L1 loss: the teacher (D5C5) or the plain student baseline (D3C5).",
    "sftkd train-teacher recipes/demo/teacher.yaml",
    "sftkd train-teacher --model D5C5 --data data/demo train.epochs=10",
    "sftkd train-teacher --model D3C5 --data data/demo --name demo-student",
)


@app.command("train-teacher", cls=HelpCommand, help=HELP)
def train_teacher(
    args: list[str] = common.Args,
    model: str = typer.Option(None, "--model", "-m", metavar="DnCm", help="Architecture DnCm, e.g. D5C5 (teacher) or D3C5 (student baseline)."),
    data: str = common.DataOpt,
    acc: float = common.AccOpt,
    name: str = common.NameOpt,
    runs_dir: str = common.RunsDirOpt,
    epochs: int = common.EpochsOpt,
    device: str = common.DeviceOpt,
    threads: int = common.ThreadsOpt,
    amp: str = common.AmpOpt,
    init_from: str = typer.Option(None, "--init-from", metavar="RUN", help="Start from the weights of another run or checkpoint (fine-tuning)."),
    resume: bool = common.ResumeOpt,
    force: bool = common.ForceOpt,
    print_recipe: bool = common.PrintOpt,
) -> None:
    """Train one DC-CNN with L1 loss (see HELP)."""
    from sftkd_cli.training.supervised import train_supervised

    recipe = common.build_recipe(
        args, data=data, acc=acc, name=name, runs_dir=runs_dir, epochs=epochs, device=device,
        threads=threads, amp=amp, **{"model.name": model},
    )
    common.print_or_train(recipe, print_recipe, train_supervised, init_from=init_from, resume=resume, force=force)
