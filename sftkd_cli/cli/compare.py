"""`sftkd compare RUN...`: result tables from evaluated run directories."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from sftkd_cli.choices import COMPARE_FORMATS, DEFAULT_ALPHA, DEFAULT_METRICS, FASTMRI_METRICS, PAPER_METRICS
from sftkd_cli.cli.base import HelpCommand, examples, stderr_console, stdout_console
from sftkd_cli.errors import SftkdError, counted
from sftkd_cli.output_target import check_output_file
from sftkd_cli.run_files import SCORE_FILES

if TYPE_CHECKING:  # the library (NumPy, SciPy, torch) is imported when the command runs, never for --help
    from sftkd_cli.report.compare import RunResult


#: --format's choices: the formats `render` writes
OutputFormat = Enum("OutputFormat", {name: name for name in COMPARE_FORMATS}, type=str)  # type: ignore[misc]


class GroupMode(str, Enum):
    paper = "paper"


#: --convention's choices: the score conventions evaluate writes (paper, fastmri)
Convention = Enum("Convention", {name: name for name in SCORE_FILES}, type=str)  # type: ignore[misc]


def check_compare_out(path: Path, fmt: str, force: bool) -> None:
    """Refuse, before any work, an --out sftkd reads from a run folder or a dataset (even with --force), a folder,
    or an existing regular file that no earlier compare wrote (unless --force); a compare output is
    replaced, and a device or FIFO (/dev/stdout, a pipe) written to."""
    if not path.parent.is_dir():
        raise SftkdError(f"--out {path}: directory {path.parent} does not exist")
    from sftkd_cli.report.formats import expected_output, written_by_compare

    check_output_file(path, "--out", force, written_by_compare, f"an earlier compare output (expected {expected_output(fmt)})")


def _write_output(path: Path, text: str) -> None:
    """Write the --out file atomically (nothing half-written); `check_compare_out` passed it."""
    from sftkd_cli.files import atomic_write_text

    atomic_write_text(path, text)


HELP = examples(
    "Tabulate evaluated runs: metric mean ± std over slices, Δ to a reference run, and Wilcoxon p-values vs a "
    "baseline over paired volumes (a volume: the mean of its slices)."
    "\n\nRUN is an evaluated run directory or a plan's runs folder (runs/demo); folders that are "
    "not runs are warned about, files ignored. A run stands for its own scores: its other evaluations "
    "(RUN/eval-split-test, an SFT run's RUN/eval-student, ...) are named in a note; give them as RUN to add "
    "them. --group paper prints the paper's Table 1 layout. "
    "--convention fastmri tabulates the scores of `sftkd evaluate --convention fastmri` (RUN/eval-fastmri/: "
    "mean ± std over volumes).",
    "sftkd compare runs/demo",
    "sftkd compare runs/demo-* --format markdown --out results.md",
    "sftkd compare runs/demo --group paper",
    "sftkd compare runs/demo --format csv --no-zf",
    "sftkd compare runs/knee-* --convention fastmri",
)


def compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Evaluated run directories, or a plan's runs folder; `runs/*` is fine.", show_default=False)],
    metrics: Annotated[str | None, typer.Option("--metrics", metavar="LIST", help=f"Comma-separated metrics (default {','.join(DEFAULT_METRICS)}; with --group paper {','.join(PAPER_METRICS)}).")] = None,
    reference: Annotated[str | None, typer.Option("--reference", metavar="RUN", help="Run for the Δ columns (default: the only teacher run; 'none': no Δ).")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", metavar="RUN", help="Run the Wilcoxon tests compare against (default: the only student run; 'none': no tests).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", metavar="P", help="Significance level: p-values below it get a '*'.")] = DEFAULT_ALPHA,
    fmt: Annotated[OutputFormat | None, typer.Option("--format", "-f", metavar="FORMAT", case_sensitive=False, help=f"{', '.join(COMPARE_FORMATS[:-1])} or {COMPARE_FORMATS[-1]} (default: the one --out's suffix names: .csv, .json, .md, .tex, .txt; else table).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE", help="Also write the output, in the chosen format, to this file. An existing file is replaced only when an earlier compare wrote it (told by its content: JSON with \"kind\": \"compare\" or \"paper\", CSV with compare's header row, markdown, LaTeX or table output with the title line sftkd compare) or with --force; never a file sftkd reads from a run folder or a dataset (recipe.yaml, metrics.json, per_slice.csv, checkpoints, manifest.json...).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file that no earlier compare wrote, and existing --attention figures that sftkd did not write (never a run's or a dataset's files).")] = False,
    group: Annotated[GroupMode | None, typer.Option("--group", metavar="paper", case_sensitive=False, help="paper: the paper's Table 1 (datasets x models, accelerations x {Std-KD, SFT-KD-Recon}).")] = None,
    zero_filled: Annotated[bool, typer.Option("--zf/--no-zf", help="Show the zero-filled input (ZF) row.")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on runs not evaluated yet instead of skipping them.")] = False,
    convention: Annotated[Convention, typer.Option("--convention", metavar="NAME", case_sensitive=False, help=f"paper (per slice, as `sftkd evaluate` scores by default) or fastmri (per volume, from RUN/eval-fastmri/; default metrics {','.join(FASTMRI_METRICS)}).")] = Convention.paper,
    attention: Annotated[Path | None, typer.Option("--attention", metavar="STEM", help="Also draw the AT attention-map residues of each compared KD run to its own teacher, per cascade (the paper's Fig. 6), to STEM.png and STEM.pdf (a .png or .pdf ending is dropped: out/att.png writes out/att.png and out/att.pdf). An existing figure is replaced only when sftkd wrote it (its PNG Software or PDF Creator metadata says sftkd), when it is empty, or with --force.")] = None,
    attention_slice: Annotated[str | None, typer.Option("--attention-slice", metavar="VOL:N", help="The slice for --attention, volume:index as the dataset names them, e.g. icbm152_z027-034:4 for the demo data (default: the middle slice of the middle volume).")] = None,
    attention_data: Annotated[Path | None, typer.Option("--attention-data", metavar="DIR", help="The prepared dataset for --attention (default: the first KD run's data.path, as its recipe names it).")] = None,
) -> None:
    """Tabulate evaluated runs (see HELP)."""
    from sftkd_cli.report.compare import collect_runs, tabulate
    from sftkd_cli.report.formats import check_alpha, output_format, render, to_rich, view

    check_alpha(alpha)
    if out is not None:  # a run's or a dataset's file is refused as such first, whatever the format
        check_compare_out(out, output_format(None, out) if fmt is None else fmt.value, force)
    chosen = output_format(None if fmt is None else fmt.value, out)
    where = _attention_slice(attention_slice, attention)
    if attention is not None:
        from sftkd_cli.report.figures import check_figure_targets

        check_figure_targets(attention, "--attention", force)
    if attention_data is not None and attention is None:
        raise SftkdError("--attention-data: only used with --attention STEM")
    results, warnings = collect_runs(runs, strict=strict, convention=convention.value)
    for message in warnings:
        stderr_console().print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if attention is not None:  # its students, dataset and slice before the table and --out are written
        from sftkd_cli.report.attention import check_attention_slice, distilled_runs

        check_attention_slice(distilled_runs(results), attention_data, *where)
    if convention is Convention.paper:
        _note_other_evaluations([Path(run.label) for run in results])
    names = [name for name in metrics.split(",") if name.strip()] if metrics is not None else None
    result = tabulate(results, reference, baseline, paper=group is GroupMode.paper, metrics=names, zero_filled=zero_filled)
    text = render(result, chosen, alpha)
    if out is not None:
        _write_output(out, text)
    if chosen == "table":
        stdout_console().print(to_rich(view(result, alpha, stacked=True)))
    else:
        typer.echo(text, nl=False)
    if attention is not None:
        _attention_figure(results, attention, where, attention_data)


def _note_other_evaluations(compared: list[Path]) -> None:
    """One line naming the evaluations inside the compared runs that the table leaves out (a run
    folder stands for its own scores): the first three, the others counted."""
    from sftkd_cli.eval_folders import other_evaluations

    others = other_evaluations(compared)
    if others:
        shown = ", ".join(map(str, others[:3])) + (f" and {counted(len(others) - 3, 'other')}" if len(others) > 3 else "")
        stderr_console().print(f"note: also evaluated, not in this table: {escape(shown)} (give a folder to add it)",
                               highlight=False, soft_wrap=True)


def _attention_slice(text: str | None, attention: Path | None) -> tuple[str | None, int | None]:
    """--attention-slice VOLUME:SLICE as (volume, slice); (None, None) when not given."""
    if text is None:
        return None, None
    if attention is None:
        raise SftkdError("--attention-slice: only used with --attention STEM")
    volume, _, number = text.rpartition(":")
    if not volume or not number.strip().isdigit():
        raise SftkdError(f"--attention-slice {text}: expected VOLUME:SLICE (e.g. icbm152_z027-034:4)")
    return volume, int(number)


def _attention_figure(results: list[RunResult], stem: Path, where: tuple[str | None, int | None],
                      dataset: Path | None) -> None:
    """Fig. 6 for the compared KD runs (each against the teacher it was distilled from)."""
    from sftkd_cli.report.attention import attention_residues_from_runs, distilled_runs

    output = attention_residues_from_runs(distilled_runs(results), stem, dataset=dataset, volume=where[0], index=where[1],
                                          split=results[0].split)
    stderr_console().print(f"attention-map residues: {', '.join(escape(str(p)) for p in output.paths)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("compare", cls=HelpCommand, help=HELP)(compare)
