"""`sftkd evaluate RUN`: score a trained run on a split (metrics.json, per_slice.csv, per_volume.csv, recon.h5)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from sftkd_cli.choices import AMP_MODES, ARCH_LABELS, CHECKPOINT_NAMES, FASTMRI_METRIC_NAMES, METRIC_NAMES
from sftkd_cli.cli.base import HelpCommand, any_case, examples, stderr_console, stdout_console
from sftkd_cli.name_checks import DEVICE_NAMES
from sftkd_cli.run_files import METRICS_JSON, RECON_H5, SCORE_CSVS, SCORE_FILES


HELP = examples(
    f"Reconstruct a split with a run's checkpoint ({ARCH_LABELS}; best unless --checkpoint or the recipe's "
    f"eval.checkpoint names another) and score {', '.join(METRIC_NAMES)}."
    "\n\nAlso scores the network's input: the zero-filled image (the paper's ZF row), or for a "
    "super-resolution run (data.task=sr) the interpolated low-resolution image. Writes metrics.json, per_slice.csv, "
    "per_volume.csv and recon.h5 into the run directory; `sftkd compare` tabulates them. Models trained on complex data "
    "(fastMRI k-space: two channels, real and imaginary) are scored on the magnitude of their output. "
    "--convention fastmri scores as the fastmri package's evaluate.py does (magnitude centre-cropped to "
    f"the target, {', '.join(FASTMRI_METRIC_NAMES)} per volume with the volume's maximum, mean ± std over volumes) "
    "into RUN/eval-fastmri/ (metrics.json, per_volume.csv, recon.h5).",
    "sftkd evaluate runs/demo",
    "sftkd evaluate runs/demo-teacher runs/demo-student --threads 1",
    "sftkd evaluate runs/knee-teacher --device cuda --batch-size 32",
    "sftkd evaluate runs/demo/sft --model student --no-recon",
    "sftkd evaluate runs/knee-teacher --convention fastmri",
)


def evaluate(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="One or more run directories, or a plan's runs folder (runs/demo).", show_default=False)],
    data: Annotated[Optional[Path], typer.Option("--data", "-d", metavar="DIR", help="Dataset directory (default: the run's data.path); scores on another dataset than the model was trained on go to <folder>/eval-data-<dataset>-<fingerprint>/.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", metavar="SPLIT", help="Split to score (default: the recipe's eval.split, val); scores of another split go to <folder>/eval-split-<split>/, so the eval.split scores stay.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", metavar="WHICH", callback=any_case(CHECKPOINT_NAMES), help="best, last, or a checkpoint file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", metavar="ROLE", help="Which model of the run, e.g. `student` of an SFT run (scores go to RUN/eval-student/).")] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", callback=any_case(DEVICE_NAMES), help="auto, cpu, cuda or cuda:N.")] = "auto",
    no_recon: Annotated[bool, typer.Option("--no-recon", help="Do not write recon.h5; one left in the same folder by an earlier evaluation is removed (it would not match the new scores).")] = False,
    exported: Annotated[Optional[Path], typer.Option("--exported", metavar="FILE", help="Score a file `sftkd export` wrote from RUN instead of a checkpoint (scores go to RUN/eval-<file>-<format>/); refused, as a checkpoint is, on data its card says it does not fit.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", metavar="N", show_default=False, help="Slices per forward pass (default: the run's train.batch_size, at least 8). Changes speed and memory; scores only by float rounding.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", metavar="N", show_default=False, help="CPU threads for torch while scoring and timing (default: the run's train.threads, as in training; 0 = torch default).")] = None,
    amp: Annotated[str, typer.Option("--amp", metavar="MODE", callback=any_case(AMP_MODES), help="Mixed precision: off (full fp32, no TF32), bf16 (any CPU, fast with AVX512-BF16 or AMX; GPUs) or fp16 (CUDA); scores go to <folder>/eval-amp-<amp>/.")] = "off",
    convention: Annotated[str, typer.Option("--convention", metavar="NAME", callback=any_case(SCORE_FILES), help="paper (the paper's reference evaluation, per slice) or fastmri (the fastmri package's, per volume; scores go to <folder>/eval-fastmri/).")] = "paper",
) -> None:
    """Score runs on a split (see HELP)."""
    from sftkd_cli.checkpoints import check_runs_hold
    from sftkd_cli.eta import ProgressLines
    from sftkd_cli.evaluate import check_evaluate_options, evaluate_run
    from sftkd_cli.report.formats import metrics_table
    from sftkd_cli.runs import expand_runs_folder, open_run

    check_evaluate_options(threads, batch_size, convention)  # before the first run's work, not after it
    console, err_console = stdout_console(), stderr_console()
    runs = [run for given in runs for run in expand_runs_folder(given)]
    for run in runs:  # every run exists before the first is evaluated: a typo does not leave half the work
        open_run(run)
    if model is not None and exported is None and len(runs) > 1:  # each holds that model (one run: evaluate_run says it)
        check_runs_hold(runs, model, checkpoint)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    say = partial(err_console.print, highlight=False, markup=False, soft_wrap=True)
    for run in runs:
        with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
            task = bar.add_task(f"{run.name}: slices", total=None)
            # no terminal (a log file, CI, nohup): plain lines every half minute instead of the bar, timed per run
            progress = (partial(_update_bar, bar, task) if err_console.is_terminal
                        else partial(ProgressLines(say, "evaluate"), f"{run.name}: slices"))
            metrics = evaluate_run(run, data=data, split=split, checkpoint=checkpoint, model_role=model,
                                   device=device, write_recon=not no_recon, exported=exported, amp=amp, threads=threads,
                                   convention=convention, batch_size=batch_size, console=err_console, progress=progress)
        console.print(metrics_table(metrics))
        written = (METRICS_JSON, *SCORE_CSVS[convention], *(() if no_recon else (RECON_H5,)))
        console.print(f"wrote {metrics['output_dir']}/" + ", ".join(written),
                      soft_wrap=True, markup=False, highlight=False)


def _update_bar(bar: Progress, task: TaskID, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)


def register(app: typer.Typer) -> None:
    app.command("evaluate", cls=HelpCommand, help=HELP)(evaluate)
