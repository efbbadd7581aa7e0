"""`sftkd evaluate RUN`: score a trained run on a split (metrics.json, per_slice.csv, recon.h5)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sftkd_cli.cli.app import HelpCommand, app, examples
from sftkd_cli.cli.common import console


HELP = examples(
    "Reconstruct a split with a run's best checkpoint and score PSNR, SSIM, NMSE, MSE, HFN, HFEN, VIF."
    "\n\nAlso scores the zero-filled input (the paper's ZF row). Writes metrics.json, per_slice.csv "
    "and recon.h5 into the run directory; `sftkd compare` tabulates them.",
    "sftkd evaluate runs/demo",
    "sftkd evaluate runs/demo-teacher runs/demo-student --threads 1",
    "sftkd evaluate runs/demo/sft --model student --no-recon",
)


@app.command("evaluate", cls=HelpCommand, help=HELP)
def evaluate(
    runs: list[Path] = typer.Argument(..., metavar="RUN", help="One or more run directories, or a plan's runs folder (runs/demo).", show_default=False),
    data: Path = typer.Option(None, "--data", "-d", metavar="DIR", help="Dataset directory (default: the run's data.path)."),
    split: str = typer.Option(None, "--split", metavar="SPLIT", help="Split to score (default: the recipe's eval.split, val)."),
    checkpoint: str = typer.Option(None, "--checkpoint", metavar="WHICH", help="best, last, or a checkpoint file."),
    model: str = typer.Option(None, "--model", metavar="ROLE", help="Which model of the run, e.g. `student` of an SFT run (scores go to RUN/eval-student/)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    no_recon: bool = typer.Option(False, "--no-recon", help="Do not write recon.h5."),
    exported: Path = typer.Option(None, "--exported", metavar="FILE", help="Score a file from `sftkd export` instead of a checkpoint (scores go to RUN/eval-<file>-<format>/)."),
    threads: int = typer.Option(
        None, "--threads", metavar="N", show_default=False,
        help="CPU threads for torch while scoring and timing (default: the run's train.threads, as in training; 0 = torch default).",
    ),
    amp: str = typer.Option("off", "--amp", metavar="MODE", help="Mixed precision: off, bf16 (CPUs with AVX512-BF16, GPUs) or fp16 (CUDA); scores go to <folder>/eval-amp-<amp>/."),
) -> None:
    """Score runs on a split (see HELP)."""
    from sftkd_cli.evaluate import check_threads, evaluate_run, print_metrics
    from sftkd_cli.runs import expand_runs_folder

    if threads is not None:
        check_threads(threads)  # before the first run's work, not after it
    err = Console(stderr=True)
    runs = [run for given in runs for run in expand_runs_folder(given)]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    for run in runs:
        with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task(f"{run.name}: slices", total=None)
            metrics = evaluate_run(run, data=data, split=split, checkpoint=checkpoint, model_role=model,
                                   device=device, write_recon=not no_recon, exported=exported, amp=amp, threads=threads,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        print_metrics(metrics, console)
        console.print(f"wrote {metrics['output_dir']}/metrics.json, per_slice.csv" + ("" if no_recon else ", recon.h5"), soft_wrap=True)
