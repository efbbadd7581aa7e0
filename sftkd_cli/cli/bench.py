"""`sftkd bench`: time training steps, SFT, KD and inference on synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sftkd_cli.choices import (BENCH_PARTS, BENCH_PRECISIONS, COMPLEX_PARAMS_TEXT, CUDA_SWEEP_BATCH, EPOCH_STEPS,
                               EPOCH_VAL_SLICES, STUDENT, TEACHER)
from sftkd_cli.bench_file import BENCH_KEYS_TEXT, written_by_bench
from sftkd_cli.cli.base import HelpCommand, any_case, examples, stderr_console, stdout_console
from sftkd_cli.distill.catalog import CATALOG
from sftkd_cli.errors import SftkdError, counted, exit_status
from sftkd_cli.name_checks import DEVICE_NAMES

if TYPE_CHECKING:  # the library (torch) is imported when the command runs, never for --help
    from sftkd_cli.bench import BenchResult

HELP = examples(
    "Measure how fast sftkd trains and reconstructs on this machine (no dataset needed)."
    "\n\nSynthetic inputs: random phantoms of --size x --size, the paper's random row mask at 4x. "
    "Each figure is the median wall time of --repeats calls after --warmup untimed calls."
    f"\n\nRows: training steps (forward + backward + Adam) of the teacher {TEACHER} and student {STUDENT}; the SFT "
    "joint step (branches batched through each shared block on CUDA, one by one on the CPU); one KD "
    f"step per method with the frozen teacher under no_grad; inference of {TEACHER} and {STUDENT} at batch 1 and "
    "--batch: eager, the files `sftkd export` writes (TorchScript, and ONNX in onnxruntime, fp32 CPU) and, "
    "with --compile, torch.compile (inductor, frozen weights); on CUDA also every training step and the "
    f"inference replayed from a CUDA graph, and inference at batch 1, --batch and {CUDA_SWEEP_BATCH}; and the bf16 part: teacher and student steps "
    "and inference in fp32 and under bf16 autocast side by side, on CUDA also inside CUDA graphs (\"vs ref\" "
    "of a bf16 row = its fp32 twin); "
    f"and the epoch part: the teacher trained by the engine itself at the demo's scale ({EPOCH_STEPS} steps and "
    f"{EPOCH_VAL_SLICES} validation slices per epoch), an epoch's wall time against the sum of its steps' times."
    "\n\nEvery row of ours has a \"reference way\" twin timed in the same run: the same work done as the "
    "paper's code does it (NCHW, every conv padded on the full map, backprop through the KD teacher, SFT "
    "branch by branch). \"vs ref\" is that twin's time over ours (> 1: we are faster), the honest speed-up "
    "on a noisy machine. Ours run in the memory layout training chooses on this machine (NCHW or "
    "channels_last, measured once and cached; each row's note says which). GFLOP/s counts 3x3-conv work "
    "only (training = 3x forward) and \"% roof\" divides it by the best GFLOP/s of one 32->32 conv "
    "measured in the same run, in the row's precision, on a large map and on the run's own (on a CPU "
    "small maps that stay in cache are often the faster)."
    f"\n\n--complex times every row on complex data instead (fastMRI-like: two channels, real and imaginary, "
    f"centred k-space, complex data consistency): {COMPLEX_PARAMS_TEXT}."
    "\n\nCtrl-C or SIGTERM stops a run early and keeps what it measured: the rows so far are shown and "
    "written to --json with \"complete\": false, and the exit status is 130 (143 after SIGTERM).",
    "sftkd bench",
    "sftkd bench --only teacher,infer --repeats 3",
    "sftkd bench --only kd --methods at,fitnets",
    "sftkd bench --precision bf16 --compile --json bench.json",
    "sftkd bench --complex --only teacher,student,infer",
)


def bench(
    size: Annotated[int, typer.Option("--size", metavar="N", help="Image height = width in pixels (the cardiac data are 150).")] = 150,
    batch: Annotated[int, typer.Option("--batch", metavar="N", help="Batch size of training steps and of the throughput rows.")] = 4,
    threads: Annotated[int, typer.Option("--threads", metavar="N", help="torch CPU threads (set explicitly; 1 is often best on small noisy VMs).")] = 1,
    precision: Annotated[str, typer.Option("--precision", metavar="P", callback=any_case(BENCH_PRECISIONS), help="fp32, or bf16 (torch.autocast to bfloat16).")] = "fp32",
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", callback=any_case(DEVICE_NAMES), help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    repeats: Annotated[int, typer.Option("--repeats", metavar="N", help="Timed calls per row; the median is reported.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", metavar="N", help="Untimed calls before timing each row.")] = 2,
    only: Annotated[Optional[str], typer.Option("--only", metavar="PARTS", help=f"Comma-separated parts to run: {','.join(BENCH_PARTS)} (default all).")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", metavar="LIST", help=f"KD methods for the kd rows: {','.join(CATALOG)} (default all).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="Also time torch.compile'd inference (compiling takes a while; skipped with a note if it fails).")] = False,
    roof_size: Annotated[int, typer.Option("--roof-size", metavar="N", help="Side of the roof conv's large (16, 32, N, N) input (it is also measured on the run's own shapes); smaller is quicker.")] = 256,
    tf32: Annotated[bool, typer.Option("--tf32", help="TF32 convolutions and matrix products on NVIDIA GPUs, as train.tf32 trains (default off, as training).")] = False,
    complex_data: Annotated[bool, typer.Option("--complex", help="Complex data (two channels, real and imaginary, centred k-space): every network built for it.")] = False,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE", help=f"Write the full result as JSON to FILE; '-' prints it to stdout instead of the table. An existing FILE is replaced only when an earlier bench wrote it (a JSON object with bench's {BENCH_KEYS_TEXT}), when it is empty, or with --force; never a file sftkd reads from a run or a dataset (recipe.yaml, metrics.json, checkpoints, manifest.json, .h5...).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --json FILE that no earlier bench wrote (never a run's or a dataset's files).")] = False,
) -> None:
    from sftkd_cli.bench import run_bench
    from sftkd_cli.bench.display import header, ratio_lines, table
    from sftkd_cli.files import atomic_write_text, json_text
    from sftkd_cli.signals import interrupts

    if json_out not in (None, "-"):
        _check_json_target(Path(json_out), force)
    to_stdout = json_out == "-"
    try:  # SIGTERM stops it as Ctrl-C does: the rows measured so far are kept
        with interrupts() as caught, stderr_console().status("benchmarking") as status:
            result = run_bench(
                size=size, batch=batch, threads=threads, precision=precision, device=device, repeats=repeats,
                warmup=warmup, which=[only] if only is not None else None, methods=[methods] if methods is not None else None, compile=compile,
                roof_size=roof_size, complex_data=complex_data, tf32=tf32,
                progress=lambda message: status.update(f"benchmarking: {escape(message)}"),
            )
    except KeyboardInterrupt:
        stderr_console().print("[red]bench interrupted before its first row was measured: nothing to keep[/]", highlight=False)
        raise typer.Exit(exit_status(caught.signum)) from None
    text = json_text(result.to_dict())  # inf/NaN (a zero time or roof) as null
    if to_stdout:
        typer.echo(text)
        _exit_if_interrupted(result, json_out, result.stopped_by or caught.signum)
        return
    out = stdout_console()
    if not out.is_terminal:
        out = Console(width=max(out.width, 110))  # files, CI logs: not 80 columns
    out.print(header(result), highlight=False)
    out.print(table(result))
    for line in ratio_lines(result):
        out.print(f"  {escape(line)}", highlight=False)
    for row in result.rows:
        if row.note:
            out.print(f"[dim]{escape(row.what)}: {escape(row.note)}[/]", highlight=False)
    for note in result.notes:
        out.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    if json_out is not None:  # after the table: a write that fails still leaves the figures on screen
        atomic_write_text(Path(json_out), text + "\n")
        out.print(f"[green]wrote[/] {escape(json_out)}", highlight=False)
    _exit_if_interrupted(result, json_out, result.stopped_by or caught.signum)


def _check_json_target(path: Path, force: bool) -> None:
    """Refuse, before anything is measured (one line), a --json FILE that cannot be written, or that
    it must not replace (`output_target.check_output_file`: a run's or a dataset's file, or, without
    `force`, an existing file no earlier bench wrote)."""
    from sftkd_cli.files import check_writable, output_path
    from sftkd_cli.output_target import check_output_file

    check_writable(path.parent, "--json")
    try:
        output_path(path)
    except SftkdError as exc:
        raise SftkdError(f"--json {exc}") from None
    check_output_file(path, "--json", force, written_by_bench,
                      f"an earlier bench JSON (expected an object with {BENCH_KEYS_TEXT})")


def _exit_if_interrupted(result: BenchResult, json_out: str | None, signum: int) -> None:
    """An interrupted run (its rows already shown and written) ends with one line and exit 130
    (143 after SIGTERM)."""
    if result.complete:
        return
    kept = f", in {escape(json_out)} with \"complete\": false" if json_out not in (None, "-") else ""
    stderr_console().print(f"[yellow]bench interrupted: kept {counted(len(result.rows), 'row')}{kept}[/]", highlight=False)
    raise typer.Exit(exit_status(signum))


def register(app: typer.Typer) -> None:
    app.command("bench", cls=HelpCommand, help=HELP)(bench)
