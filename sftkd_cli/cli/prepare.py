"""`sftkd prepare-data SOURCE ...`: raw volumes -> training-ready dataset (thin layer over
`sftkd_cli.data.prepare.prepare_dataset`).

One sub-command per source of `sftkd_cli.data.catalog.SOURCES` (demo, acdc, mrbrains, nifti),
generated from its spec: the shared mask, split and output options are declared once below; each
source adds its own options and defaults (image size, slicing) and its help.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sftkd_cli.acquisition import KSPACE_LAYOUTS, TASKS
from sftkd_cli.choices import ALL_KINDS, DEFAULT_CENTER_FRACTION, FASTMRI_CENTER_PRODUCT
from sftkd_cli.cli.base import USAGE_ERROR, HelpCommand, HelpGroup, any_case, examples, stderr_console, stdout_console
from sftkd_cli.data.catalog import SOURCES, SourceOption, SourceSpec
from sftkd_cli.data.options import OptionNames, PrepareOptions, parse_accelerations, parse_mask_files
from sftkd_cli.errors import SftkdError

if TYPE_CHECKING:  # the library (NumPy, h5py, torch) is imported when a command runs, never for --help
    from sftkd_cli.data.prepare import PrepareResult
    from sftkd_cli.data.sources import Source

prepare_app = typer.Typer(
    cls=HelpGroup,
    no_args_is_help=True,
    help=examples(
        f"Prepare a dataset ({', '.join(SOURCES)}).\n\n"
        "Turn raw MRI volumes into a training-ready dataset: one .h5 per volume (image, masked "
        "k-space and zero-filled image per acceleration; with --task sr, low-resolution input per scale) "
        "plus manifest.json. Re-running with the same options is a no-op (inputs whose size and modification "
        "time are unchanged are not read again; --force reads all); the output appears atomically. An "
        "interrupted run (Ctrl-C, a kill) keeps its files in .<DIR>.partial beside the output: the same "
        "command again resumes.",
        "sftkd prepare-data demo",
        "sftkd prepare-data acdc /data/ACDC --out data/acdc",
        "sftkd prepare-data nifti /data/scans --out data/scans",
    ),
)

_STAGES = {"hash": "checksums", "read": "reading volumes", "write": "writing h5 files"}

# ----------------------------------------------------------------- shared options

#: "0.04 random and equispaced, 0.08 fastmri": kinds that share a default are named together
_CENTER_DEFAULTS = ", ".join(
    f"{fraction:g} {' and '.join(k for k, f in DEFAULT_CENTER_FRACTION.items() if f == fraction)}"
    for fraction in dict.fromkeys(DEFAULT_CENTER_FRACTION.values()))

Out = Annotated[
    Path, typer.Option("--out", "-o", metavar="DIR", help="Dataset folder to create (must be outside ROOT).")
]
Size = Annotated[
    Optional[tuple[int, int]],
    typer.Option("--size", metavar="H W", help="Centre crop / zero-pad slices to H x W (no resampling)."),
]
SliceAxis = Annotated[
    int, typer.Option("--slice-axis", metavar="AXIS", help="Volume axis to slice along (0, 1, 2; -1 = last).")
]
Downsample = Annotated[
    int, typer.Option("--downsample", min=1, metavar="N", help="In-plane block-mean downsampling factor (1 = none).")
]
Acc = Annotated[
    Optional[list[str]],
    typer.Option("--acc", "--scale", metavar="X",
                 help="Acceleration(s), repeatable or comma list; with --task sr the scale factor(s) (--scale). "
                      "Default: 4,5 (or those of --mask-file); sr: 4."),
]
#: --acc of a source that decides the task itself (recon only): no --scale, no sr
ReconAcc = Annotated[
    Optional[list[str]],
    typer.Option("--acc", metavar="X", help="Acceleration(s), repeatable or comma list. Default: 4,5 (or those of --mask-file)."),
]
#: flags of earlier versions, refused with their new name rather than click's guess
RENAMED = {"--accelerations": "--acc"}
Task = Annotated[
    str,
    typer.Option("--task", metavar="TASK", callback=any_case(TASKS),
                 help="recon (undersampled k-space and zero-filled image per acceleration) or sr "
                      "(super-resolution: the central 1/s x 1/s of k-space per scale s, zero-padded and "
                      "interpolated back to full size)."),
]
MaskKind = Annotated[str, typer.Option("--mask-kind", metavar="KIND", callback=any_case(ALL_KINDS), help=f"Generated masks: {' | '.join(ALL_KINDS)} (the last two: the fastmri package's RandomMaskFunc and EquispacedMaskFractionFunc ('equispaced_fraction'), bit for bit).")]
MaskFile = Annotated[
    Optional[list[str]],
    typer.Option("--mask-file", metavar="ACC=PATH",
                 help="Use this mask for acceleration ACC (.npy/.npz/.mat/.h5); repeatable. A bare PATH "
                      "needs a single --acc. It must sample k-space's DC line in the dataset's layout "
                      "(--mask-layout corner: index 0; centered: N // 2)."),
]
MaskLayout = Annotated[
    str, typer.Option("--mask-layout", metavar="LAYOUT", callback=any_case(KSPACE_LAYOUTS), help="k-space layout: corner (unshifted, the paper's) | centered.")
]
CenterFraction = Annotated[
    Optional[float], typer.Option("--center-fraction", metavar="F", help=f"Fully sampled low-frequency fraction of lines (default: {_CENTER_DEFAULTS}, {FASTMRI_CENTER_PRODUCT:g}/acc fastmri-*).")
]
Seed = Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the masks and of the split.")]
ValFraction = Annotated[
    Optional[float],
    typer.Option("--val-fraction", metavar="F", help="Seeded share of volumes for val (of patients where the source splits by patient). Default: 0.25, or none where the data bring their val set (ACDC testing/, fastMRI singlecoil_val/)."),
]
TestFraction = Annotated[
    Optional[float],
    typer.Option("--test-fraction", metavar="F", help="Seeded share of volumes for test (as --val-fraction). Default: 0."),
]
Val = Annotated[
    Optional[list[str]], typer.Option("--val", metavar="ID", help="Volume id for val (a patient id where the source splits by patient); repeatable.")
]
Test = Annotated[
    Optional[list[str]], typer.Option("--test", metavar="ID", help="Volume id for test (as --val); repeatable.")
]
MinSliceMean = Annotated[
    float,
    typer.Option("--min-slice-mean", metavar="F",
                 help="Skip slices whose mean is below this fraction of the volume mean (0 = keep all "
                      "non-empty slices)."),
]
Force = Annotated[
    bool, typer.Option("--force", help="Rebuild an existing dataset prepared with other options.")
]
Root = Annotated[Path, typer.Argument(metavar="ROOT", help="Folder holding the raw data.", show_default=False)]


def _run(source: Source, out: Path, options: PrepareOptions) -> PrepareResult:
    """Run the library with a transient progress bar on a terminal, plain progress lines elsewhere
    (a log file, CI, nohup: `eta.ProgressLines`), then print the summary table."""
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.eta import ProgressLines

    err = stderr_console()

    def show(line: str) -> None:
        err.print(line, highlight=False, markup=False, soft_wrap=True)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done)

        lines = ProgressLines(show, "prepare-data", _STAGES)
        result = prepare_dataset(source, out, options, progress=progress if err.is_terminal else lines,
                                 say=lambda line: show(f"prepare-data: {line}"))
    print_summary(result, stdout_console(), warn_no_val=options.val_fraction != 0)
    if note := result.moved_root_note(source.root):
        stdout_console().print(note, highlight=False, markup=False, soft_wrap=True)
    if warning := result.padding_warning():
        stderr_console().print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    return result


def print_summary(result: PrepareResult, console: Console, warn_no_val: bool = True) -> None:
    """A table: source, folder, volumes and slices per split, size, masks; with `warn_no_val`
    (not asked for none: --val-fraction 0), a warning when the val split is empty."""
    from sftkd_cli.data.manifest import describe_manifest
    from sftkd_cli.files import display_path

    m = result.manifest
    where = display_path(result.out)
    if result.unchanged:
        console.print(f"{where} is up to date (same options and source checksums): nothing written. "
                      "Use --force to rebuild.", highlight=False, markup=False, soft_wrap=True)
    table = Table(title="prepared dataset", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths whole, folded at the edge, never cut with '…'
    rows = describe_manifest(m)
    rows.insert(1, ("written to", where))  # the source, then where it went
    for what, value in rows:
        table.add_row(what, escape(value))  # a path is text, not rich markup
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)
    if warn_no_val and (warning := result.no_val_warning()):
        stderr_console().print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


# ----------------------------------------------------------------- commands

#: the options every source's command has, in help order (a source's own options go after
#: the one they name in `SourceOption.after`; options the source decides itself are left out)
SHARED: tuple[tuple[str, Any], ...] = (
    ("size", Size), ("slice_axis", SliceAxis), ("downsample", Downsample),
    ("val_fraction", ValFraction), ("test_fraction", TestFraction), ("val", Val), ("test", Test),
    ("min_slice_mean", MinSliceMean), ("acc", Acc), ("mask_kind", MaskKind), ("mask_file", MaskFile),
    ("mask_layout", MaskLayout), ("center_fraction", CenterFraction), ("seed", Seed), ("force", Force),
    ("task", Task),
)
#: repeatable options: None when not given
_REPEATABLE = ("val", "test", "acc", "mask_file")


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _own(option: SourceOption) -> inspect.Parameter:
    """A source's own option as a command parameter."""
    kind = option.type if option.default is not None else Optional[option.type]
    info = typer.Option(option.flag, metavar=option.metavar, help=option.help,
                        callback=any_case(option.choices) if option.choices else None)
    return _option(option.key, Annotated[kind, info], option.default)


def parameters(spec: SourceSpec) -> list[inspect.Parameter]:
    """The command's parameters, in help order: ROOT, --out, then the shared options with the
    source's own options placed after the ones they follow."""
    out: list[inspect.Parameter] = []
    if spec.needs_root:
        out += [_option("root", Root, inspect.Parameter.empty), _option("out", Out, inspect.Parameter.empty)]
    else:
        info = typer.Option("--out", "-o", metavar="DIR", help="Dataset folder to create.")
        out.append(_option("out", Annotated[Path, info], Path(spec.default_out or f"data/{spec.name}")))
    out += [_own(o) for o in spec.options if o.after == "out"]
    for name, annotation in SHARED:
        if name in spec.decides:
            continue
        if name == "acc" and "task" in spec.decides:
            annotation = ReconAcc
        out.append(_option(name, annotation, None if name in _REPEATABLE else spec.option_default(name)))
        out += [_own(o) for o in spec.options if o.after == name]
    return out


def _prepare_options(spec: SourceSpec, values: dict[str, Any]) -> PrepareOptions:
    """The command's values -> PrepareOptions: --acc and --mask-file parsed, the rest as given
    (accelerations default to the mask files' or 4, 5; sr: 4)."""
    accelerations = parse_accelerations(values.get("acc"))
    if values.get("task") == "sr" and values.get("mask_file"):  # before parsing, which would blame a bare path on --acc
        raise SftkdError("--mask-file: not used by --task sr (the scale fixes the central k-space box); remove it")
    mask_files = parse_mask_files(values.get("mask_file"), accelerations)
    given = {key: value for key, value in values.items() if key not in ("acc", "mask_file")}  # as parsed here
    return spec.prepare_options({**given, "accelerations": accelerations, "mask_files": mask_files})


def _command(spec: SourceSpec) -> Callable[..., None]:
    """The `prepare-data <source>` function: typer reads its parameters from `__signature__`."""

    def command(**values: Any) -> None:
        root, out = values.pop("root", None), values.pop("out")
        options = _prepare_options(spec, values)
        _run(spec.make_source(root, values), out, options)

    command.__name__ = command.__qualname__ = spec.name
    command.__signature__ = inspect.Signature(parameters(spec))  # type: ignore[attr-defined]
    return command


class _SourceCommand(HelpCommand):
    """A `prepare-data <source>` command: a shared option its source decides itself (demo's
    --val) is refused saying so (`SourceSpec.unused`), not as an unknown option."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except USAGE_ERROR as exc:  # click's NoSuchOption names the flag it did not know
            spec = SOURCES[self.name or ""]
            decided = {OptionNames()(key): key for key in spec.decides}
            flag = getattr(exc, "option_name", None)
            if flag in decided:
                raise SftkdError(spec.unused(decided[flag])) from None
            if flag in RENAMED:
                raise SftkdError(f"{flag}: renamed {RENAMED[flag]} (e.g. {RENAMED[flag]} 4 --acc 8)") from None
            raise


#: each source's command function, by source name (also `prepare.<name>`)
COMMANDS: dict[str, Callable[..., None]] = {}
for _spec in SOURCES.values():
    COMMANDS[_spec.name] = prepare_app.command(
        _spec.name, cls=_SourceCommand, help=examples(_spec.help, *_spec.examples)
    )(_command(_spec))


def __getattr__(name: str) -> Callable[..., None]:
    """`prepare.demo`, `prepare.acdc`, ...: the command of that source."""
    if name in COMMANDS:
        return COMMANDS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(app: typer.Typer) -> None:
    app.add_typer(prepare_app, name="prepare-data")
