"""`sftkd reproduce PLAN.yaml`: data, training, evaluation and report of a whole experiment."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sftkd_cli.choices import EXECUTORS, KIND_ALIASES, KINDS, PER_GPU
from sftkd_cli.cli.base import HelpCommand, examples, stderr_console, stdout_console
from sftkd_cli.errors import SftkdError, counted

#: --executor's choices: the executors `make_executor` builds
ExecutorName = Enum("ExecutorName", {name: name for name in EXECUTORS}, type=str)  # type: ignore[misc]


HELP = examples(
    "Run a reproduction plan: prepare data, train teacher, student, SFT teacher and KD students, evaluate "
    "every run, compare them and write a report (tables, Wilcoxon p-values, figures)."
    "\n\nRe-running continues where it stopped: finished stages are skipped, interrupted runs resumed."
    "\n\nWith --jobs N, up to N stages that do not need each other run at once, each in a worker process "
    "(its output in <report>/logs/<stage>.log); the results are those of one stage after another."
    "\n\nWith --executor ray the stages run as Ray tasks on a Ray cluster (pip install 'sftkd\\[cluster]'), each "
    "holding a share of a GPU or CPUs; a stage whose worker dies is retried and resumes from its last checkpoint. "
    "Every node needs sftkd, and the data and the runs folder at the same paths on shared storage.",
    "sftkd reproduce demo",
    "sftkd reproduce demo --jobs 3",
    "sftkd reproduce demo --dry-run --estimate --jobs 3",
    "sftkd reproduce table1-acdc --executor ray --address HEAD:6379 --jobs 8",
    "sftkd reproduce recipes/demo.yaml --dry-run --only kd",
    "sftkd reproduce table1-acdc --data-root /data/ACDC train.device=cuda",
)


def reproduce(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="Plan file (YAML with `plan: 1`), e.g. recipes/demo.yaml, or the name of a plan shipped with sftkd, e.g. demo or table1-acdc.", show_default=False)],
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="KEY=VALUE", help="Recipe overrides `section.key=value` for every stage (applied last), e.g. train.device=cuda.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what each stage would do (run, resume, skip) and exit.")] = False,
    only: Annotated[Optional[list[str]], typer.Option("--only", metavar="STAGES", help=f"Run only these stages (repeatable or comma list): a stage id or glob (sft-kd-*), a kind ({', '.join((*KINDS, *KIND_ALIASES))}) or a variant name. Stages they need must be complete already.")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going/--stop-on-error", help="After a failed stage, go on with the stages that do not need it (default), or stop.")] = True,
    runs_dir: Annotated[Optional[Path], typer.Option("--runs-dir", metavar="DIR", help="Folder of the run directories (the plan's runs_dir); a `report:` folder inside the plan's runs_dir moves with it.")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", metavar="DIR", help="Raw data folder (the plan's data.root), e.g. /data/ACDC.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=256, metavar="N", help="Run up to N stages that do not need each other at once, each in a worker process (its output in the log files of the report folder); on the CPU each gets cpus/N torch threads unless the recipe sets train.threads. 1: one after another, output here.")] = 1,
    per_gpu: Annotated[Optional[int], typer.Option("--per-gpu", min=1, max=64, metavar="K", show_default=False, help=f"With --jobs N (N > 1) or --executor ray, on CUDA: at most K stages share one GPU (default {PER_GPU}); the visible GPUs take the stages in turn.")] = None,
    executor_name: Annotated[ExecutorName, typer.Option("--executor", metavar="|".join(EXECUTORS), case_sensitive=False, help="Where the stages run: local (this machine) or ray (tasks on a Ray cluster, up to --jobs at once; a stage on CUDA holds 1/K of a GPU, K from --per-gpu).")] = ExecutorName("local"),
    address: Annotated[Optional[str], typer.Option("--address", metavar="ADDR", help="With --executor ray: the Ray cluster, e.g. HEAD:6379 (default: RAY_ADDRESS, else a cluster started here with `ray start`, else a new Ray on this machine).")] = None,
    estimate: Annotated[bool, typer.Option("--estimate", help="With --dry-run: the expected wall time of the plan on this machine with --jobs N, from the epoch times of its runs (or a short training probe).")] = False,
) -> None:
    """Run a reproduction plan (see HELP)."""
    from sftkd_cli.reproduce import (
        build_stages, format_seconds, load_plan, print_plan, print_status, run_plan, select, total_seconds,
    )
    from sftkd_cli.reproduce.display import failed_line
    from sftkd_cli.reproduce.executor import check_executor, make_executor
    from sftkd_cli.reproduce.kinds import REPORT_MD

    plan = load_plan(plan_file, overrides or [], runs_dir=runs_dir, data_root=data_root)  # a path or a shipped plan's name
    stages = build_stages(plan)
    chosen = select(stages, only)  # a token that matches no stage: refused before anything starts
    console = stdout_console()
    if estimate and not dry_run:
        raise SftkdError("--estimate: add --dry-run (the estimate runs no stage)")
    check_executor(executor_name.value, address, jobs, per_gpu)  # before a dry run too
    per_gpu = PER_GPU if per_gpu is None else per_gpu
    if dry_run:
        print_plan(plan, stages, chosen, console)
        if estimate:
            from sftkd_cli.reproduce.estimate import estimate_plan, print_estimate

            print_estimate(estimate_plan(plan, stages, chosen, jobs, per_gpu=per_gpu), console)
        return
    executor = make_executor(executor_name.value, jobs, per_gpu, address)
    started = time.perf_counter()
    outcome = run_plan(plan, stages, only=only or [], keep_going=keep_going, console=console, executor=executor,
                       progress=stderr_console())
    print_status(outcome.results, console)
    total = f"total {format_seconds(total_seconds(outcome.results))}"
    if executor is not None:  # stages overlap: the wall time is what was waited
        total = f"wall time {format_seconds(time.perf_counter() - started)} ({total} of stage time, up to {executor.slots} at once)"
    console.print(total + (f"; report: {outcome.report / REPORT_MD}" if outcome.report else ""), highlight=False,
                  soft_wrap=True)  # a path split over two lines cannot be copied
    if outcome.failed:
        raise SftkdError(failed_line(outcome.failed))
    if outcome.blocked:  # needs left out by --only: these could not run
        first, why = next(iter(outcome.blocked.items()))
        raise SftkdError(f"{counted(len(outcome.blocked), 'stage')} not run: {', '.join(outcome.blocked)} ({first}: {why}); "
                         "add what they need to --only, or run it first")


def register(app: typer.Typer) -> None:
    app.command("reproduce", cls=HelpCommand, help=HELP)(reproduce)
