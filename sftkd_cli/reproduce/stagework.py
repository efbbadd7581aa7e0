"""Doing one stage of a plan: prepare the data, train (or resume, or skip) a run, evaluate a
model, or write the report. Shared by the one-after-another runner (`running`) and the jobs that
run stages in worker processes (`jobs`), so that both do exactly the same work.

The training functions come in as `trainers` (kind -> function), so that callers and tests can
run a plan with other ones without patching module names.
"""

from __future__ import annotations

import datetime
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.evaluate import evaluate_run
from sftkd_cli.files import open_log_for_append
from sftkd_cli.reproduce.data import check_figure_slice, check_split, prepare_data
from sftkd_cli.reproduce.display import model_text
from sftkd_cli.choices import TRAIN_KINDS
from sftkd_cli.reproduce.kinds import DONE, REPORT_MD, RESUMED, SKIPPED, UP_TO_DATE, is_up_to_date
from sftkd_cli.reproduce.report import write_report
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import (
    Stage, StageResult, evaluation_complete, plan_conflict, report_complete, training_state, writes_reconstructions,
)
from sftkd_cli.training.kd import distill
from sftkd_cli.training.lines import RESUME_HINTS
from sftkd_cli.training.sft import train_sft
from sftkd_cli.training.supervised import train_supervised


#: a training stage's kind -> the function that trains it: f(recipe, *, resume, console)
Trainers = Mapping[str, Callable[..., Any]]


def default_trainers() -> dict[str, Callable[..., Any]]:
    """The library's training function for each training kind: what `run_plan` uses by default."""
    return {"teacher": train_supervised, "student": train_supervised, "sft": train_sft,
            "std-kd": distill, "sft-kd": distill}


def run_stage(stage: Stage, plan: Plan, stages: Sequence[Stage], results: Mapping[str, StageResult],
              trainers: Trainers, console: Console, number: int, total: int) -> tuple[str, str]:
    """Run one stage, printing to `console`; returns (status, note). `results` are the stages
    done before (the report's status table, and whether the report is up to date)."""
    def header(action: str) -> None:
        console.rule(f"[bold][{number}/{total}] {escape(stage.id)}[/] {escape(action)}", align="left")

    if stage.kind == "data":
        header(f"{plan.data.source} -> {plan.data.out}")
        wrote = prepare_data(plan.data, plan.path, console)
        check_split(plan.data.out, plan.evaluate["split"], f"{plan.path}: stages.evaluate.split")
        check_figure_slice(plan.data.out, plan.evaluate["split"], plan.figures["volume"], plan.figures["slice"],
                           str(plan.path))
        return (DONE, "prepared") if wrote else (SKIPPED, UP_TO_DATE)
    if stage.kind in TRAIN_KINDS:
        assert stage.recipe is not None
        state, detail = training_state(stage)
        if state != "new" and (conflict := plan_conflict(stage)):
            raise SftkdError(conflict)
        if state == "complete":
            console.print(f"[dim][{number}/{total}] {escape(stage.id)}: up to date ({detail})[/]", highlight=False)
            return SKIPPED, f"{UP_TO_DATE} ({detail})"
        header(f"{'resume' if state == 'partial' else 'train'} {model_text(stage)}"
               + (f" ({detail})" if detail else "") + f" -> {stage.run}")
        trainers[stage.kind](stage.recipe, resume=state == "partial", console=console)
        return (RESUMED, f"from {detail}") if state == "partial" else (DONE, "")
    if stage.kind == "evaluate":
        if evaluation_complete(stage, plan):
            console.print(f"[dim][{number}/{total}] {escape(stage.id)}: up to date[/]", highlight=False)
            return SKIPPED, UP_TO_DATE
        header(f"evaluate {stage.run}" + (f" --model {stage.model_role}" if stage.model_role else ""))
        evaluate_stage(stage, plan)
        return DONE, ""
    up_to_date = bool(results) and all(is_up_to_date(r.note) for r in results.values())
    if up_to_date and report_complete(plan, stages):
        console.print(f"[dim][{number}/{total}] report: up to date ({plan.report_dir / REPORT_MD})[/]", highlight=False)
        return SKIPPED, UP_TO_DATE
    header(f"report -> {plan.report_dir}")
    problems = write_report(plan, stages, list(results.values()), console)
    if problems:
        raise SftkdError(f"report written to {plan.report_dir} with problems: {'; '.join(problems)}")
    return DONE, str(plan.report_dir / REPORT_MD)


def evaluate_stage(stage: Stage, plan: Plan) -> None:
    """Evaluate the stage's model on the plan's dataset, split and checkpoint (recon.h5 too for
    the runs the figures show: `writes_reconstructions`). The plan's dataset, not the one the
    run's recipe.yaml names: a dataset moved to another folder (same fingerprint) is accepted
    for the run, so it is where the data is now; a run trained on other data is refused here
    too (as the training stage refuses it), for a plan run with --only eval-*."""
    assert stage.recipe is not None and stage.run is not None
    if conflict := plan_conflict(stage):
        raise SftkdError(conflict)
    evaluate_run(  # with the run's train.threads, as it trained
        stage.run, data=plan.data.out, split=plan.evaluate["split"], checkpoint=plan.evaluate["checkpoint"],
        model_role=stage.model_role, device=stage.recipe.train.device,
        write_recon=writes_reconstructions(stage, plan))


#: what stops a stage, and with it the plan, rather than failing it: a signal (RunInterrupted,
#: which prepare-data's PrepareInterrupted is too) or a second Ctrl-C (KeyboardInterrupt)
INTERRUPTS: tuple[type[BaseException], ...] = (RunInterrupted, KeyboardInterrupt)


def interrupted_note(exc: BaseException) -> str:
    """The one line a stage stopped by a signal shows: its message, with a training command's
    '--resume' advice as a plan's user follows it (the plan's own last line says the same)."""
    note = str(exc) or "interrupted"
    for hint in RESUME_HINTS:
        note = note.replace(hint, "running the plan again resumes it")
    return note


def failure_note(exc: BaseException) -> str:
    """The one line a failed stage shows: an SftkdError's message, else the exception's type and text."""
    return str(exc) if isinstance(exc, SftkdError) else f"{type(exc).__name__}: {exc}"


def log_error(plan: Plan, stage: Stage, exc: BaseException) -> None:
    """Append an unexpected error's traceback to <report>/errors.log (the console shows one line)."""
    try:
        plan.report_dir.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_log_for_append(plan.report_dir / "errors.log"), "a") as handle:
            handle.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} stage {stage.id}\n")
            handle.write("".join(traceback.format_exception(exc)))
    except (OSError, SftkdError):  # the console has the error's line; a refused log loses only the traceback
        pass
