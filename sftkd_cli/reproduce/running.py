"""Running a plan: each chosen stage in order, skipping what is complete, resuming what is
partial, and going on past a failure with the stages that do not need the failed one.

With `jobs` > 1 (or an `executor`) the stages run as a dependency graph, several at once, each in
a worker process with its output in its log (`schedule.run_graph`); with one job (the default)
they run here, one after another, printing to the console as they always did. Both do the same
work per stage (`stagework.run_stage`) and give the same results.

The training functions come in as `trainers` (kind -> function), so that callers and tests can
run a plan with other ones without patching module names (with jobs, importable functions).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from sftkd_cli import eta
from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.reproduce.display import print_status
from sftkd_cli.reproduce.executor import Executor, LocalExecutor
from sftkd_cli.reproduce.graph import blocked_stages, blocker
from sftkd_cli.choices import TRAIN_KINDS
from sftkd_cli.reproduce.kinds import DONE, FAILED, INTERRUPTED, SKIPPED
from sftkd_cli.reproduce.schedule import run_graph
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import Stage, StageResult, build_stages, select
from sftkd_cli.reproduce.stagework import INTERRUPTS, Trainers, default_trainers, failure_note, interrupted_note, log_error, run_stage


@dataclass
class PlanOutcome:
    """Results of every stage that was considered, the report folder (when written), and the
    chosen stages that could not run in this call, with why (`blocked`: a stage they need was
    left out by `only` and is not complete; they are among the results as skipped)."""

    results: list[StageResult]
    report: Path | None = None
    blocked: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[StageResult]:
        return [r for r in self.results if r.status in (FAILED, INTERRUPTED)]


def run_plan(
    plan: Plan,
    stages: Sequence[Stage] | None = None,
    *,
    only: Sequence[str] = (),
    keep_going: bool = True,
    console: Console | None = None,
    trainers: Trainers | None = None,
    jobs: int = 1,
    executor: Executor | None = None,
    progress: Console | None = None,
) -> PlanOutcome:
    """Run the plan's stages in order (see the package docstring); the report comes last.

    `trainers` trains each kind of training stage (None: `default_trainers()`). With `jobs` > 1
    or an `executor` (None: a `LocalExecutor(jobs)`), independent stages run at once and
    `progress` (None: `console`) shows them; the stages' own output goes to their logs."""
    console = console or Console()
    stages = list(stages) if stages is not None else build_stages(plan)
    chosen = select(stages, only)
    blocked = blocked_stages(stages, chosen, plan)  # before anything runs: running changes what is complete
    if jobs > 1 or executor is not None:
        outcome = _run_parallel(plan, stages, chosen, executor or LocalExecutor(jobs), keep_going=keep_going,
                                trainers=trainers, console=console, progress=progress or console)
        outcome.blocked = blocked
        return outcome
    trainers = default_trainers() if trainers is None else trainers
    results: dict[str, StageResult] = {}
    broken: dict[str, str] = {}  # stage id -> "failed" or "skipped": stages that need it cannot run
    outcome = PlanOutcome([], blocked=blocked)
    todo = [s for s in stages if s.id in chosen]
    stopped = ""
    plan_started, timed = time.perf_counter(), []  # timed: (cost, seconds) of training stages done here
    for number, stage in enumerate(todo, start=1):
        why = stopped or blocker(stage, chosen, broken, stages, plan)
        if why:
            broken[stage.id] = SKIPPED
            results[stage.id] = StageResult(stage.id, stage.kind, SKIPPED, note=why)
            console.print(f"[dim][{number}/{len(todo)}] {escape(stage.id)}: skipped ({escape(why)})[/]", highlight=False)
            continue
        started = time.perf_counter()
        try:
            status, note = run_stage(stage, plan, stages, results, trainers, console, number, len(todo))
        except INTERRUPTS as exc:
            results[stage.id] = StageResult(stage.id, stage.kind, INTERRUPTED, time.perf_counter() - started, interrupted_note(exc))
            print_status([results[s.id] for s in todo if s.id in results], console)
            raise RunInterrupted(f"{plan.path}: stopped at stage {stage.id}; run the same command again to continue",
                                 getattr(exc, "signum", signal.SIGINT)) from None
        except Exception as exc:  # noqa: BLE001 - a failing stage must not stop independent ones
            note = failure_note(exc)
            if not isinstance(exc, SftkdError):
                log_error(plan, stage, exc)
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


def _run_parallel(plan: Plan, stages: Sequence[Stage], chosen: set[str], executor: Executor, *, keep_going: bool,
                  trainers: Trainers | None, console: Console, progress: Console) -> PlanOutcome:
    """The chosen stages as a dependency graph through `executor`; Ctrl-C: the status so far, then RunInterrupted."""
    todo = [s for s in stages if s.id in chosen]
    run = run_graph(plan, stages, todo, chosen, executor, keep_going=keep_going, trainers=trainers, console=progress)
    outcome = PlanOutcome(run.results)
    if any(r.kind == "report" and r.status == DONE for r in run.results):
        outcome.report = plan.report_dir
    if run.interrupted:
        print_status(run.results, console)
        stopped = [r.id for r in run.results if r.status == INTERRUPTED]
        raise RunInterrupted(f"{plan.path}: stopped" + (f" at {'stage' if len(stopped) == 1 else 'stages'} {', '.join(stopped)}" if stopped else "")
                             + "; run the same command again to continue", run.signum)
    return outcome
