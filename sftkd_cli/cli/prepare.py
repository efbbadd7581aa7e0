"""`sftkd prepare-data SOURCE ...`: raw volumes -> training-ready dataset (thin layer over
`sftkd_cli.data.prepare.prepare_dataset`).

One sub-command per source: demo, acdc, mrbrains, nifti. They share the mask, split and output
options; only their inputs and defaults (image size, slicing) differ.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sftkd_cli.choices import SOURCE_DEFAULTS
from sftkd_cli.cli.app import HelpCommand, HelpGroup, app, examples
from sftkd_cli.errors import SftkdError

if TYPE_CHECKING:  # the library (NumPy, h5py, torch) is imported when a command runs, never for --help
    from sftkd_cli.data.prepare import PrepareOptions, PrepareResult
    from sftkd_cli.data.sources import Source

prepare_app = typer.Typer(
    cls=HelpGroup,
    no_args_is_help=True,
    help=examples(
        "Prepare a dataset (demo, acdc, mrbrains, nifti).\n\n"
        "Turn raw MRI volumes into a training-ready dataset: one .h5 per volume (image, masked "
        "k-space and zero-filled image per acceleration; with --task sr, low-resolution input per scale) "
        "plus manifest.json. Re-running with the same options is a no-op; the output appears atomically.",
        "sftkd prepare-data demo",
        "sftkd prepare-data acdc /data/ACDC --out data/acdc",
        "sftkd prepare-data nifti /data/scans --out data/scans",
    ),
)
app.add_typer(prepare_app, name="prepare-data")

_STAGES = {"hash": "checksums", "read": "reading volumes", "write": "writing h5 files"}

# ----------------------------------------------------------------- shared options

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
Task = Annotated[
    str,
    typer.Option("--task", metavar="TASK",
                 help="recon (undersampled k-space and zero-filled image per acceleration) or sr "
                      "(super-resolution: the central 1/s x 1/s of k-space per scale s, zero-padded and "
                      "interpolated back to full size)."),
]
MaskKind = Annotated[str, typer.Option("--mask-kind", metavar="KIND", help="Generated masks: random | equispaced | fastmri.")]
MaskFile = Annotated[
    Optional[list[str]],
    typer.Option("--mask-file", metavar="ACC=PATH",
                 help="Use this mask for acceleration ACC (.npy/.npz/.mat/.h5); repeatable. A bare PATH "
                      "needs a single --acc."),
]
MaskLayout = Annotated[
    str, typer.Option("--mask-layout", metavar="LAYOUT", help="k-space layout: corner (unshifted, the paper's) | centered.")
]
CenterFraction = Annotated[
    Optional[float], typer.Option("--center-fraction", metavar="F", help="Fully sampled low-frequency fraction of lines.")
]
Seed = Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the masks and of the split.")]
ValFraction = Annotated[
    Optional[float],
    typer.Option("--val-fraction", metavar="F", help="Seeded share of volumes (ACDC: patients) for val. Default: 0.25."),
]
TestFraction = Annotated[
    Optional[float],
    typer.Option("--test-fraction", metavar="F", help="Seeded share of volumes (ACDC: patients) for test. Default: 0."),
]
Val = Annotated[
    Optional[list[str]], typer.Option("--val", metavar="ID", help="Volume (ACDC: patient) id for val; repeatable.")
]
Test = Annotated[
    Optional[list[str]], typer.Option("--test", metavar="ID", help="Volume (ACDC: patient) id for test; repeatable.")
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


def _options(
    *, size: tuple[int, int] | None, slice_axis: int, downsample: int, acc: list[str] | None,
    mask_kind: str, mask_file: list[str] | None, mask_layout: str, center_fraction: float | None,
    seed: int, min_slice_mean: float, force: bool, task: str = "recon", val_fraction: float | None = None,
    test_fraction: float | None = None, val: list[str] | None = None, test: list[str] | None = None,
) -> PrepareOptions:
    """Command-line values -> PrepareOptions (accelerations default to the mask files' or 4, 5; sr: 4)."""
    from sftkd_cli.data.prepare import PrepareOptions, default_accelerations, parse_accelerations, parse_mask_files

    accelerations = parse_accelerations(acc)
    if task == "sr" and mask_file:  # before parsing, which would blame a bare path on --acc
        raise SftkdError("--mask-file: not used by --task sr (the scale fixes the central k-space box); remove it")
    mask_files = parse_mask_files(mask_file, accelerations)
    accelerations = accelerations or default_accelerations(task, mask_files)
    return PrepareOptions(
        size=None if size is None else (int(size[0]), int(size[1])),
        slice_axis=slice_axis, downsample=downsample, accelerations=accelerations,
        mask_kind=mask_kind, mask_files=mask_files, mask_layout=mask_layout,
        center_fraction=center_fraction, seed=seed, val_fraction=val_fraction,
        test_fraction=test_fraction, val=tuple(val or ()), test=tuple(test or ()),
        min_slice_mean=min_slice_mean, force=force, task=task,
    )


def _options_from(arguments: dict[str, Any], **fixed: Any) -> PrepareOptions:
    """`_options` from a command's arguments (its `locals()`), matched by name, plus `fixed` values."""
    names = inspect.signature(_options).parameters
    return _options(**{k: v for k, v in arguments.items() if k in names}, **fixed)


def _run(source: Source, out: Path, options: PrepareOptions) -> PrepareResult:
    """Run the library with a transient progress bar, then print the summary table."""
    from sftkd_cli.data.prepare import prepare_dataset

    err = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done)

        result = prepare_dataset(source, out, options, progress=progress)
    print_summary(result, Console())
    return result


def _source_text(manifest: dict) -> str:
    """Source label and where it came from (folder, or package version for the demo)."""
    from sftkd_cli.data.volumes import display_path

    details = manifest.get("source_details", {})
    if manifest.get("source_root"):
        return f"{manifest['source']} ({display_path(manifest['source_root'])})"
    if details.get("nilearn_version"):
        return f"{manifest['source']} (nilearn {details['nilearn_version']})"
    return f"{manifest['source']} ({display_path(details.get('file', ''))})"


def print_summary(result: PrepareResult, console: Console) -> None:
    """A table: source, folder, volumes and slices per split, size, masks."""
    from sftkd_cli.data.prepare import group_key
    from sftkd_cli.data.volumes import display_path

    m = result.manifest
    where = display_path(result.out)
    if result.unchanged:
        console.print(f"{where} is up to date (same options and source checksums): nothing written. "
                      "Use --force to rebuild.", highlight=False, soft_wrap=True)
    table = Table(title=f"prepared dataset {where}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    splits = [s for s in ("train", "val", "test") if m["splits"].get(s)]
    table.add_row("source", _source_text(m))
    table.add_row("written to", where)
    table.add_row("volumes", ", ".join(f"{s} {len(m['splits'][s])}" for s in splits))
    table.add_row("slices", ", ".join(f"{s} {m['slices'][s]}" for s in splits))
    h, w = m["image_size"]
    table.add_row("image size", f"{h} x {w}")
    mask = m["mask"]
    if m.get("task") == "sr":
        boxes = ", ".join(
            f"{a:g}x: low resolution {' x '.join(map(str, mask['per_acceleration'][group_key('sr', a)]['box']))}"
            for a in m["accelerations"]
        )
        table.add_row("task", "super-resolution (input: low-resolution image interpolated to full size)")
        table.add_row("scales", boxes)
        table.add_row("k-space layout", f"{mask['layout']}, central box kept")
    else:
        lines = ", ".join(
            f"{a:g}x: {mask['per_acceleration'][group_key('recon', a)]['lines']}/{h} lines "
            f"({mask['per_acceleration'][group_key('recon', a)]['origin']})"
            for a in m["accelerations"]
        )
        table.add_row("accelerations", lines)
        table.add_row("mask layout", f"{mask['layout']}, rows sampled (axis 0), seed {mask['seed']}")
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)


# ----------------------------------------------------------------- commands


@prepare_app.command(
    "demo",
    cls=HelpCommand,
    help=examples(
        "Built-in demo: a real T1 brain template shipped in an installable package (nilearn's "
        "ICBM152 2009a; pip install 'sftkd\\[demo]'), or Colin27 from Debian's mricron-data.\n\n"
        "Axial slices, 2x in-plane block-mean downsampling (2 mm) and a centre 96 x 96 crop; slices "
        "darker than 0.3 x the volume mean are skipped. Split into slabs of 8 slices separated by 2 "
        "skipped slices, in the pattern train, val, train, test, train (about 60/20/20).",
        "sftkd prepare-data demo",
        "sftkd prepare-data demo --out data/demo-colin --source colin27",
        "sftkd prepare-data demo --out data/demo-sr --task sr --scale 4",
    ),
)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Dataset folder to create.")] = Path("data/demo"),
    source: Annotated[
        str, typer.Option("--source", metavar="NAME", help="Template: icbm152 (nilearn) | colin27 (mricron-data).")
    ] = "icbm152",
    template: Annotated[
        Optional[Path], typer.Option("--template", metavar="FILE", help="Explicit path of the template NIfTI file.")
    ] = None,
    size: Size = SOURCE_DEFAULTS["demo"]["size"],
    downsample: Downsample = SOURCE_DEFAULTS["demo"]["downsample"],
    slab: Annotated[int, typer.Option("--slab", metavar="N", help="Slices per split slab.")] = 8,
    gap: Annotated[int, typer.Option("--gap", metavar="N", help="Slices skipped between slabs (>= 1).")] = 2,
    min_slice_mean: MinSliceMean = SOURCE_DEFAULTS["demo"]["min_slice_mean"],
    acc: Acc = None,
    mask_kind: MaskKind = "random",
    mask_file: MaskFile = None,
    mask_layout: MaskLayout = "corner",
    center_fraction: CenterFraction = None,
    seed: Seed = 42,
    force: Force = False,
    task: Task = "recon",
) -> None:
    options = _options_from(locals(), slice_axis=SOURCE_DEFAULTS["demo"]["slice_axis"])
    from sftkd_cli.data.sources import DemoSource

    _run(DemoSource(source, template, slab=slab, gap=gap), out, options)


@prepare_app.command(
    "acdc",
    cls=HelpCommand,
    help=examples(
        "ACDC cardiac MRI: the ED/ES image frames of training|testing/patientNNN/ (never labels or "
        "4-D cines), slices along the last axis, centre 150 x 150.\n\n"
        "Split by patient: training/ -> train and testing/ -> val (the paper's 150/50). Without "
        "testing/, or with --val/--val-fraction, a seeded 25 % of the training patients is val and "
        "testing/ becomes test.",
        "sftkd prepare-data acdc /data/ACDC --out data/acdc",
        "sftkd prepare-data acdc /data/ACDC --out data/acdc-5x --acc 5",
        "sftkd prepare-data acdc /data/ACDC --out data/acdc-f --mask-file 4=mask4.npy",
    ),
)
def acdc(
    root: Root,
    out: Out,
    size: Size = SOURCE_DEFAULTS["acdc"]["size"],
    slice_axis: SliceAxis = SOURCE_DEFAULTS["acdc"]["slice_axis"],
    downsample: Downsample = 1,
    val_fraction: ValFraction = None,
    test_fraction: TestFraction = None,
    val: Val = None,
    test: Test = None,
    min_slice_mean: MinSliceMean = 0.0,
    acc: Acc = None,
    mask_kind: MaskKind = "random",
    mask_file: MaskFile = None,
    mask_layout: MaskLayout = "corner",
    center_fraction: CenterFraction = None,
    seed: Seed = 42,
    force: Force = False,
    task: Task = "recon",
) -> None:
    options = _options_from(locals())
    from sftkd_cli.data.sources import AcdcSource

    _run(AcdcSource(root), out, options)


@prepare_app.command(
    "mrbrains",
    cls=HelpCommand,
    help=examples(
        "MRBrainS18 (training/<id>/pre/T1.nii.gz) or MRBrainS13 (TrainingData/<n>/T1.nii): one "
        "modality, slices along the last axis, 240 x 240.\n\n"
        "Split by volume: a seeded 25 % for val (7 volumes -> 5 train, 2 val, as in the paper), or "
        "--val IDs.",
        "sftkd prepare-data mrbrains /data/MRBrainS18 --out data/mrbrains",
        "sftkd prepare-data mrbrains /data/MRBrainS18 --out data/sr --task sr --scale 4",
    ),
)
def mrbrains(
    root: Root,
    out: Out,
    modality: Annotated[str, typer.Option("--modality", metavar="NAME", help="T1 | FLAIR | IR.")] = "T1",
    size: Size = SOURCE_DEFAULTS["mrbrains"]["size"],
    slice_axis: SliceAxis = SOURCE_DEFAULTS["mrbrains"]["slice_axis"],
    downsample: Downsample = 1,
    val_fraction: ValFraction = None,
    test_fraction: TestFraction = None,
    val: Val = None,
    test: Test = None,
    min_slice_mean: MinSliceMean = 0.0,
    acc: Acc = None,
    mask_kind: MaskKind = "random",
    mask_file: MaskFile = None,
    mask_layout: MaskLayout = "corner",
    center_fraction: CenterFraction = None,
    seed: Seed = 42,
    force: Force = False,
    task: Task = "recon",
) -> None:
    options = _options_from(locals())
    from sftkd_cli.data.sources import MRBrainsSource

    _run(MRBrainsSource(root, modality), out, options)


@prepare_app.command(
    "nifti",
    cls=HelpCommand,
    help=examples(
        "Any folder of 3-D NIfTI volumes matched by --pattern (at any depth). Without --size all "
        "volumes must share one in-plane size. Split by volume (seeded --val-fraction, or --val IDs).",
        "sftkd prepare-data nifti /data/scans --out data/scans --size 128 128",
        "sftkd prepare-data nifti /data/scans --out data/t2 --pattern '*_T2w.nii.gz'",
    ),
)
def nifti(
    root: Root,
    out: Out,
    pattern: Annotated[
        str, typer.Option("--pattern", metavar="GLOB", help="Glob of volume files; matched at any depth unless it has '/'.")
    ] = "*.nii.gz",
    size: Size = SOURCE_DEFAULTS["nifti"]["size"],
    slice_axis: SliceAxis = SOURCE_DEFAULTS["nifti"]["slice_axis"],
    downsample: Downsample = 1,
    val_fraction: ValFraction = None,
    test_fraction: TestFraction = None,
    val: Val = None,
    test: Test = None,
    min_slice_mean: MinSliceMean = 0.0,
    acc: Acc = None,
    mask_kind: MaskKind = "random",
    mask_file: MaskFile = None,
    mask_layout: MaskLayout = "corner",
    center_fraction: CenterFraction = None,
    seed: Seed = 42,
    force: Force = False,
    task: Task = "recon",
) -> None:
    options = _options_from(locals())
    from sftkd_cli.data.sources import NiftiSource

    _run(NiftiSource(root, pattern), out, options)
