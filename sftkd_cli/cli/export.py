"""`sftkd export RUN --format torchscript|onnx`: a self-checked deployable model plus a model card."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from sftkd_cli.choices import ARCH_LABELS, BEST, CHECKPOINT_NAMES, LAST, NO_DC_LABELS
from sftkd_cli.cli.base import HelpCommand, any_case, examples, stdout_console
from sftkd_cli.run_files import EXPORT_SUFFIX

if TYPE_CHECKING:  # the library (torch) is imported when the command runs, never for --help
    from sftkd_cli.export import ExportResult


HELP = examples(
    f"Export a trained model ({ARCH_LABELS}) with its data-consistency layers to TorchScript or ONNX, "
    "checked against PyTorch."
    "\n\nInputs zf (B,1,H,W), kspace (B,2,H,W) real/imaginary (orthonormal FFT, the training data's "
    "layout: corner for the paper's data), mask (B,1,H,W); output image (B,1,H,W). A model trained on "
    "complex data (prepare-data fastmri) takes and returns two-channel images, zf and output (B,2,H,W) "
    "real/imaginary, with centred k-space. "
    f"A {NO_DC_LABELS} model (super-resolution, no data consistency) ignores kspace and mask; its ONNX file "
    "takes zf alone, the interpolated low-resolution image. Dynamic batch; ONNX has a fixed image size, TorchScript any. "
    "\n\nInputs are float32 and scaled as the training data was: divide zf and kspace of a scan by its "
    "volume's factor (the card's normalisation; the paper's data: the volume maximum) and multiply the output "
    "by it; mask is 0/1 (any non-zero counts as sampled), mask batch B or 1; no clipping. "
    "A model card <out>.card.json is written beside the file, and embedded in it: where the model comes from, "
    "how many of its planned epochs the run trained, how inputs must be scaled, the file's sha256. "
    "A missing --out folder is created (said in a note). An earlier export at the output path is replaced "
    "only with --force. README: 'Using an exported model'.",
    "sftkd export runs/demo-student --format onnx",
    "sftkd export runs/demo/sft --model student --format torchscript",
)


def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run directory to export.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", callback=any_case(EXPORT_SUFFIX), help="torchscript or onnx.", show_default=False)],
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="FILE", help="Output file (default: RUN/export/<arch>-<model>.ts|.onnx).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", metavar="ROLE", help="Which model of the run: model, teacher or student (default: the run's primary).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", metavar="WHICH", callback=any_case(CHECKPOINT_NAMES), help=f"{BEST}: the epoch of lowest validation L1 of the run's primary model (an SFT run's teacher, so --model student exports the student of that epoch); {LAST}: the last epoch. Default: the recipe's eval.checkpoint when {BEST} or {LAST}, as sftkd evaluate scores it (the card then gets its scores), else {BEST}.", show_default=False)] = None,
    size: Annotated[Optional[tuple[int, int]], typer.Option("--size", metavar="H W", help="Image size (default: the dataset's image_size).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export at the output path (never any other file).")] = False,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", metavar="DIR", help="Dataset directory (default: the run's data.path): the one the model was trained on, wherever it is now (the same manifest fingerprint; another is refused, as the card gives its mask and normalisation as the model's). The export is checked on its val slices, and the card records it.")] = None,
) -> None:
    """Export a run's model (see HELP)."""
    from sftkd_cli.errors import RunInterrupted
    from sftkd_cli.export import ExportInterrupted, export_run
    from sftkd_cli.signals import interrupts

    # SIGTERM as Ctrl-C: the temporary file is removed, nothing is written. One that comes while the
    # file and its card are renamed into place waits until both are there (`export_files.publish`):
    # the export is said as done, then the command stops as the signal asked
    try:
        with interrupts() as caught:
            result = export_run(run, fmt, out=out, role=model, checkpoint=checkpoint, size=size or None,
                                force=force, data=data)
    except ExportInterrupted as stopped:  # held while published, or a Ctrl-C / SIGTERM just after
        _say_exported(stopped.result, run, model)
        raise ExportInterrupted(stopped.result, caught.signum if caught.pressed else stopped.signum) from None
    except KeyboardInterrupt:
        raise RunInterrupted("export interrupted: nothing written", caught.signum) from None
    _say_exported(result, run, model)


def _say_exported(result: ExportResult, run: Path, model: str | None) -> None:
    """The export's lines on stdout: the file, its inputs and outputs, the check, the card, and notes
    (`model`: export's option, for the evaluate command a card without scores needs)."""
    from sftkd_cli.checkpoints import stopped_early_note

    card = result.card
    console = stdout_console()
    h, w = card["image_size"]
    size_text = "any size" if card["image_size_dynamic"] else f"{h}x{w} fixed"
    console.print(f"[green]exported[/] {card['architecture']['name']} ({card['role']}, {card['params']:,} params) "
                  f"as {card['export_format']}: {escape(str(result.path))}", soft_wrap=True)
    shapes = lambda specs: ", ".join(f"{s['name']} ({','.join(map(str, s['shape']))})" for s in specs)  # noqa: E731
    console.print(f"inputs {shapes(card['inputs'])} -> {shapes(card['outputs'])}; dynamic batch, {size_text}",
                  soft_wrap=True, markup=False)
    console.print(f"check: max |exported - PyTorch| = {result.max_abs_diff:.2e} on {card['check']['inputs']}",
                  soft_wrap=True, markup=False)
    console.print(f"model card: {result.card_path}", soft_wrap=True, markup=False)
    if result.created_folder is not None:
        console.print(f"note: created folder {result.created_folder} for --out (it did not exist)", soft_wrap=True, markup=False)
    if result.missing_data is not None:
        console.print(f"note: no dataset at {result.missing_data} (RUN's data.path, read from here): checked on synthetic "
                      "phantoms with a stand-in mask, and the card records no dataset, normalisation or mask (mask.sampled_lines "
                      "null); pass --data DIR where the dataset is now", soft_wrap=True, markup=False)
    if result.no_scores:  # what `sftkd evaluate` scores for this export: the same model and checkpoint
        command = shlex.join(["sftkd", "evaluate", str(run), *(["--model", model] if model else []),
                              "--checkpoint", card["checkpoint"]])  # the one exported, whatever eval.checkpoint says
        console.print(f"note: the card has no scores: {result.no_scores}; run `{command}` first, then export again",
                      soft_wrap=True, markup=False)
    if note := stopped_early_note(run, card["training"]):
        console.print(note, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    app.command("export", cls=HelpCommand, help=HELP)(export)
