"""`train-teacher`: one network (any model family) trained alone with L1 (the teacher, or the plain student baseline)."""

from __future__ import annotations

from rich.console import Console

from sftkd_cli.checkpoints import read_checkpoint
from sftkd_cli.config import Recipe, with_model
from sftkd_cli.errors import SftkdError
from sftkd_cli.init_from import check_train_start
from sftkd_cli.runs import RunDir
from sftkd_cli.training.engine import FitResult
from sftkd_cli.training.objectives import Supervised
from sftkd_cli.training.resume import ResumePoint
from sftkd_cli.training.session import (
    check_same_start, first_init_from, model_for, recorded_start, run_path, run_training, start_weights, with_run,
)


def default_role(model_name: str, recipe: Recipe) -> str:
    """The recipe's SFT teacher architecture is a 'teacher'; any other model is a 'student'."""
    return "teacher" if model_name.upper() == recipe.sft.teacher.upper() else "student"


def resolved_supervised(recipe: Recipe) -> Recipe:
    """The recipe `train_supervised` trains: model.name (default sft.teacher), run role and name."""
    recipe = with_model(recipe, recipe.sft.teacher)
    return with_run(recipe, default_role(recipe.model.name, recipe), recipe.model.name.upper())


def train_supervised(
    recipe: Recipe,
    *,
    init_from: str | None = None,
    resume: bool = False,
    force: bool = False,
    console: Console | None = None,
) -> tuple[RunDir, FitResult]:
    """Train `recipe.model` with L1 into `runs/<name>`; optionally start from other weights
    (`init_from`: a run directory or checkpoint file; the checkpoints record it as `init` and
    `init_sha256`, and `resume` refuses another start than the one recorded).

    `console`: where the start line and epoch lines go (default: a rich Console on stdout, with
    the progress bar on stderr; `Console(quiet=True)` for none). Returns the run folder and the fit's summary."""
    check_train_start(init_from)  # as the command (--print-recipe too) checks it
    recipe = resolved_supervised(recipe)

    def make(data: dict[str, object], point: ResumePoint | None) -> Supervised:
        model = model_for(recipe, recipe.model.name, data)
        started = recorded_start(point)  # resumed: the weights come from the run's checkpoint
        if started:
            check_same_start(recipe, started, init_from)
        elif resume and not init_from and (first := first_init_from(recipe)):
            raise SftkdError(f"{run_path(recipe)}: started with --init-from {first} and has no checkpoint yet, so it "
                             f"starts from that again; resume with --init-from {first}")
        init, sha256 = started or start_weights(model, read_checkpoint(init_from) if init_from else None)
        return Supervised(model, {"init": init, "init_sha256": sha256, "init_from": str(init_from) if init_from else None})

    return run_training(recipe, make, resume=resume, force=force, console=console, sources=[init_from or ""])
