"""One stage as a unit of work that can run in another process (or on another machine): what
`sftkd reproduce --jobs N` hands to an executor.

A `StageJob` holds everything the stage needs (the built plan and stages, the results so far for
the report, where its log goes, and where it runs: threads, device); it pickles, so an executor
can send it anywhere that sees the same files. `run_stage_job(job)` does the stage exactly as the
one-after-another runner does (`stagework.run_stage`) and returns its `StageResult`; it never
raises for a failing or interrupted stage (the result's status says what happened).

Where each stage's log goes (`stage_log`): `<report>/logs/<stage id>.log`, one file per stage,
appended to on every invocation. Not inside the run directories: a run folder holds only what
sftkd's run format lists, and a foreign file would make a new run refuse its folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sftkd_cli.errors import SftkdError, counted
from sftkd_cli.files import open_log_for_append
from sftkd_cli.reproduce.kinds import FAILED, INTERRUPTED
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import Stage, StageResult
from sftkd_cli.reproduce.stagework import INTERRUPTS, default_trainers, failure_note, interrupted_note, log_error, run_stage
from sftkd_cli.runtime import CUBLAS_WORKSPACE, DETERMINISTIC_WORKSPACE, cpu_threads

#: width of the stage logs (they are files: no terminal to measure)
LOG_WIDTH = 120


@dataclass(frozen=True)
class StageJob:
    """One stage to run, with what it needs; picklable (dataclasses, paths, plain values).

    `trainers` must be importable functions (None: the library's); `threads` and `device` are the
    executor's placement: torch's CPU threads when the recipe sets no train.threads, and the
    train.device to use instead of the recipe's (e.g. cuda:1); None leaves the recipe's."""

    plan: Plan
    stage: Stage
    stages: tuple[Stage, ...]  # the plan's stages (the report reads them)
    results: tuple[StageResult, ...] = ()  # the stages finished before this one (the report's status table)
    number: int = 1  # the stage's place among the stages run, for the log's header: [number/total]
    total: int = 1
    log: Path | None = None  # where the stage's output goes (None: standard output)
    trainers: Mapping[str, Callable[..., Any]] | None = None
    threads: int | None = None
    device: str | None = None


def stage_log(plan: Plan, stage: Stage) -> Path:
    """The stage's log file: <report>/logs/<stage id>.log (see the module docstring)."""
    return plan.report_dir / "logs" / f"{stage.id}.log"


def placed(stage: Stage, device: str | None) -> Stage:
    """The stage with its recipe's train.device set to `device` (None: unchanged)."""
    if device is None or stage.recipe is None:
        return stage
    recipe = dataclasses.replace(stage.recipe, train=dataclasses.replace(stage.recipe.train, device=device))
    return dataclasses.replace(stage, recipe=recipe)


def run_stage_job(job: StageJob) -> StageResult:
    """Run the job's stage (in this process) and return its result: done, resumed, skipped,
    failed (with the error's line; an unexpected error's traceback goes to <report>/errors.log)
    or interrupted (Ctrl-C or SIGTERM: a training stage saved its checkpoint and resumes)."""
    started = time.perf_counter()
    if any(s.recipe is not None and s.recipe.train.deterministic for s in job.stages):
        # cuBLAS reads it once, at the process's first matrix product: a deterministic stage after
        # another stage in the same process needs it set before that stage's CUDA work
        os.environ.setdefault(CUBLAS_WORKSPACE, DETERMINISTIC_WORKSPACE)
    stage = placed(job.stage, job.device)
    # the executor's share of the CPUs, for this stage only, unless its recipe sets train.threads
    threads = None if stage.recipe is not None and stage.recipe.train.threads else job.threads
    trainers = default_trainers() if job.trainers is None else job.trainers
    handle = None
    if job.log is not None:
        try:  # a link, FIFO or folder in the log's place is refused: the stage fails, nothing is written through it
            job.log.parent.mkdir(parents=True, exist_ok=True)
            handle = os.fdopen(open_log_for_append(job.log), "a", encoding="utf-8")
        except (SftkdError, OSError) as exc:
            return StageResult(stage.id, stage.kind, FAILED, time.perf_counter() - started, failure_note(exc))
    try:
        console = Console(file=handle, width=LOG_WIDTH, force_terminal=False, no_color=True) if handle else Console()
        console.print(_log_header(job, stage), highlight=False, markup=False)
        try:
            with cpu_threads(threads):
                status, note = run_stage(stage, job.plan, job.stages, {r.id: r for r in job.results},
                                         trainers, console, job.number, job.total)
        except INTERRUPTS as exc:
            status, note = INTERRUPTED, interrupted_note(exc)
        except Exception as exc:  # noqa: BLE001 - the result says it failed; the scheduler goes on
            status, note = FAILED, failure_note(exc)
            if not isinstance(exc, SftkdError):
                log_error(job.plan, stage, exc)
        seconds = time.perf_counter() - started
        console.print(f"{stage.id}: {status} in {seconds:.1f} s" + (f" ({note})" if note else ""),
                      highlight=False, markup=False, soft_wrap=True)
        return StageResult(stage.id, stage.kind, status, seconds, note)
    finally:
        if handle is not None:
            handle.close()


def _log_header(job: StageJob, stage: Stage) -> str:
    """'--- 2024-05-01T12:00:00 teacher (3/13), 2 threads, cuda:1': when and where the stage ran."""
    where = [counted(job.threads, "thread")] if job.threads else []
    if stage.recipe is not None:
        where = [counted(stage.recipe.train.threads, "thread")] if stage.recipe.train.threads else where
        where.append(f"device {stage.recipe.train.device}")
    now = datetime.datetime.now().isoformat(timespec="seconds")
    return f"--- {now} {stage.id} ({job.number}/{job.total})" + (f", {', '.join(where)}" if where else "")
