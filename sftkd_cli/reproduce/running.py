"""Running a plan: each chosen stage in order, skipping what is complete, resuming what is
partial, and going on past a failure with the stages that do not need the failed one.

The training functions come in as `trainers` (kind -> function), so that callers and tests can
run a plan with other ones without patching module names.
"""

from __future__ import annotations

import datetime
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from sftkd_cli import eta
from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.evaluate import evaluate_run
from sftkd_cli.reproduce.data import prepare_data
from sftkd_cli.reproduce.display import model_text, print_status
from sftkd_cli.reproduce.kinds import DONE, FAILED, INTERRUPTED, RESUMED, SKIPPED, TRAIN_KINDS
from sftkd_cli.reproduce.report import write_report
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import (
    Stage, StageResult, build_stages, evaluation_complete, report_complete, select, training_state,
)
from sftkd_cli.runs import RunDir
from sftkd_cli.training.kd import distill
from sftkd_cli.training.session import reconcile_resume
from sftkd_cli.training.sft import train_sft
from sftkd_cli.training.supervised import train_supervised


@dataclass
class PlanOutcome:
    """Results of every stage that was considered, and the report folder (when written)."""

    results: list[StageResult]
    report: Path | None = None

    @property
    def failed(self) -> list[StageResult]:
        return [r for r in self.results if r.status in (FAILED, INTERRUPTED)]


#: a training stage's kind -> the function that trains it: f(recipe, *, resume, console)
Trainers = Mapping[str, Callable[..., Any]]


def default_trainers() -> dict[str, Callable[..., Any]]:
    """The library's training function for each training kind: what `run_plan` uses by default."""
    return {"teacher": train_supervised, "student": train_supervised, "sft": train_sft,
            "std-kd": distill, "sft-kd": distill}


def run_plan(
    plan: Plan,
    stages: Sequence[Stage] | None = None,
    *,
    only: Sequence[str] = (),
    keep_going: bool = True,
    console: Console | None = None,
    trainers: Trainers | None = None,
) -> PlanOutcome:
    """Run the plan's stages in order (see the package docstring); the report comes last.

    `trainers` trains each kind of training stage (None: `default_trainers()`)."""
    console = console or Console()
    trainers = default_trainers() if trainers is None else trainers
    stages = list(stages) if stages is not None else build_stages(plan)
    chosen = select(stages, only)
    results: dict[str, StageResult] = {}
    broken: dict[str, str] = {}  # stage id -> "failed" or "skipped": stages that need it cannot run
    outcome = PlanOutcome([])
    todo = [s for s in stages if s.id in chosen]
    stopped = ""
    plan_started, timed = time.perf_counter(), []  # timed: (cost, seconds) of training stages done here
    for number, stage in enumerate(todo, start=1):
        blocker = stopped or _blocker(stage, chosen, broken, stages, plan)
        if blocker:
            broken[stage.id] = SKIPPED
            results[stage.id] = StageResult(stage.id, stage.kind, SKIPPED, note=blocker)
            console.print(f"[dim][{number}/{len(todo)}] {escape(stage.id)}: skipped ({escape(blocker)})[/]", highlight=False)
            continue
        started = time.perf_counter()
        try:
            status, note = _run_stage(stage, plan, stages, results, trainers, console, number, len(todo))
        except (RunInterrupted, KeyboardInterrupt) as exc:
            results[stage.id] = StageResult(stage.id, stage.kind, INTERRUPTED, time.perf_counter() - started, str(exc) or "interrupted")
            print_status([results[s.id] for s in todo if s.id in results], console)
            raise RunInterrupted(f"{plan.path}: stopped at stage {stage.id}; run the same command again to continue") from None
        except Exception as exc:  # noqa: BLE001 - a failing stage must not stop independent ones
            note = str(exc) if isinstance(exc, SftkdError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, SftkdError):
                _log_error(plan, stage, exc)
            results[stage.id] = StageResult(stage.id, stage.kind, FAILED, time.perf_counter() - started, note)
            broken[stage.id] = FAILED
            console.print(f"[bold red]failed[/] {escape(stage.id)}: {escape(note)}", highlight=False, soft_wrap=True)
            if not keep_going:
                stopped = f"not run: stopped after {stage.id} failed (--stop-on-error)"
            continue
        results[stage.id] = StageResult(stage.id, stage.kind, status, time.perf_counter() - started, note)
        if stage.kind == "report" and status != SKIPPED:
            outcome.report = plan.report_dir
        if stage.kind in TRAIN_KINDS and status == DONE and number < len(todo):
            timed.append((eta.training_cost(stage.kind, stage.recipe), results[stage.id].seconds))
            left = eta.seconds_left(timed, [eta.training_cost(s.kind, s.recipe) for s in todo[number:] if s.kind in TRAIN_KINDS])
            console.print(eta.progress_line(number, len(todo), time.perf_counter() - plan_started, left),
                          style="dim", highlight=False)
    outcome.results = [results[s.id] for s in todo]
    return outcome


def _blocker(stage: Stage, chosen: set[str], broken: dict[str, str], stages: Sequence[Stage], plan: Plan) -> str:
    """Why `stage` cannot run now ('' when it can): a stage it needs failed or was skipped, or
    is left out by --only and not complete."""
    by_id = {s.id: s for s in stages}
    for need in stage.needs:
        if need in broken:
            return f"{need} {broken[need]}"
        if need not in chosen:
            dep = by_id[need]
            if dep.kind in TRAIN_KINDS and training_state(dep)[0] != "complete":
                return f"{need} not complete (not selected by --only)"
            if dep.kind == "data" and plan.data.source != "prepared" and not (plan.data.out / "manifest.json").is_file():
                return f"{need}: {plan.data.out} not prepared (not selected by --only)"
    return ""


def _run_stage(stage: Stage, plan: Plan, stages: Sequence[Stage], results: dict[str, StageResult],
               trainers: Trainers, console: Console, number: int, total: int) -> tuple[str, str]:
    """Run one stage; returns (status, note)."""
    def header(action: str) -> None:
        console.rule(f"[bold][{number}/{total}] {escape(stage.id)}[/] {escape(action)}", align="left")

    if stage.kind == "data":
        header(f"{plan.data.source} -> {plan.data.out}")
        return (DONE, "prepared") if prepare_data(plan.data, plan.path, console) else (SKIPPED, "up to date")
    if stage.kind in TRAIN_KINDS:
        assert stage.recipe is not None
        state, detail = training_state(stage)
        if state == "complete":
            try:
                reconcile_resume(RunDir(stage.run), stage.recipe)  # type: ignore[arg-type]
            except SftkdError as exc:
                raise SftkdError(f"{exc}; the finished run differs from the plan: delete {stage.run} to train it again") from None
            console.print(f"[dim][{number}/{total}] {escape(stage.id)}: up to date ({detail})[/]", highlight=False)
            return SKIPPED, f"up to date ({detail})"
        header(f"{'resume' if state == 'partial' else 'train'} {model_text(stage)}"
               + (f" ({detail})" if detail else "") + f" -> {stage.run}")
        trainers[stage.kind](stage.recipe, resume=state == "partial", console=console)
        return (RESUMED, f"from {detail}") if state == "partial" else (DONE, "")
    if stage.kind == "evaluate":
        if evaluation_complete(stage, plan):
            console.print(f"[dim][{number}/{total}] {escape(stage.id)}: up to date[/]", highlight=False)
            return SKIPPED, "up to date"
        header(f"evaluate {stage.run}" + (f" --model {stage.model_role}" if stage.model_role else ""))
        _evaluate(stage, plan)
        return DONE, ""
    up_to_date = bool(results) and all(r.note.startswith("up to date") for r in results.values())
    if up_to_date and report_complete(plan, stages):
        console.print(f"[dim][{number}/{total}] report: up to date ({plan.report_dir / 'report.md'})[/]", highlight=False)
        return SKIPPED, "up to date"
    header(f"report -> {plan.report_dir}")
    problems = write_report(plan, stages, list(results.values()), console)
    if problems:
        raise SftkdError(f"report written to {plan.report_dir} with problems: {'; '.join(problems)}")
    return DONE, str(plan.report_dir / "report.md")


def _evaluate(stage: Stage, plan: Plan) -> None:
    """Evaluate the stage's model on the plan's split and checkpoint (recon.h5 too, for the figures)."""
    assert stage.recipe is not None and stage.run is not None
    if stage.recipe.train.threads:
        import torch

        torch.set_num_threads(stage.recipe.train.threads)
    evaluate_run(stage.run, split=plan.evaluate["split"], checkpoint=plan.evaluate["checkpoint"],
                 model_role=stage.model_role, device=stage.recipe.train.device, write_recon=True)


def _log_error(plan: Plan, stage: Stage, exc: BaseException) -> None:
    """Append an unexpected error's traceback to <report>/errors.log (the console shows one line)."""
    try:
        plan.report_dir.mkdir(parents=True, exist_ok=True)
        with open(plan.report_dir / "errors.log", "a") as handle:
            handle.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} stage {stage.id}\n")
            handle.write("".join(traceback.format_exception(exc)))
    except OSError:
        pass
