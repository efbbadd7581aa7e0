"""Figures of the paper from run directories: box plots, validation curves, a reconstruction grid.

- `box_plots`: PSNR and SSIM (any per_slice.csv columns) per run, one panel per metric
  (the paper's Figs. 4a and 8).
- `validation_curves`: validation L1 per epoch from each run's history.jsonl (Figs. 4b and 7).
- `reconstruction_grid`: one slice as target, network input and each model's reconstruction,
  each with a zoomed inset of the same region; the error |prediction - target| of each model
  underneath on one shared, data-chosen colour scale (Fig. 3).

The attention-map residues of distilled students (Fig. 6) are in `sftkd_cli.report.attention`.

Every axis says what it shows and in which unit (images are scaled to their volume's maximum,
so intensities and errors are fractions of it). A figure's heading is `title` when given, else
a descriptive default followed by `context` (e.g. the plan and group) in parentheses.

Every figure is written as PNG and PDF with matplotlib's object API (no pyplot, so no global
backend or state is touched). Each function returns a `FigureOutput` whose `data` is read back
from the drawn artists (box statistics, line points, image arrays), so tests can check that
what is plotted is what was read, without comparing pixels; `figure` is the drawn Figure.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sftkd_cli import __version__
from sftkd_cli.choices import CURVE_KEY, PAPER_METRICS
from sftkd_cli.errors import SftkdError, os_error_text
from sftkd_cli.files import replace_atomically
from sftkd_cli.h5_data import check_in_file, h5_array
from sftkd_cli.output_target import check_output_file
from sftkd_cli.run_files import HISTORY_JSONL, PER_SLICE_CSV, RECON_H5

FORMATS: tuple[str, ...] = ("png", "pdf")
BOX_METRICS: tuple[str, ...] = PAPER_METRICS
#: unit of each per_slice.csv metric; intensities are fractions of the volume maximum
METRIC_UNITS: dict[str, str] = {"PSNR": "dB", "SSIM": "unitless", "NMSE": "unitless", "MSE": "(volume max)²", "HFN": "unitless"}
#: (axis label, heading) of each history.jsonl key drawn as a validation curve
CURVE_LABELS: dict[str, tuple[str, str]] = {
    "val_l1": ("validation L1 [mean |error|, volume max = 1]", "Validation L1 per epoch"),
    "val_psnr": ("validation PSNR [dB]", "Validation PSNR per epoch"),
    "val_ssim": ("validation SSIM [unitless]", "Validation SSIM per epoch"),
}
#: the percentile of |error| (pooled over every model's map) at which the error colour scale tops out
ERROR_PERCENTILE = 99.0


@dataclass(frozen=True)
class FigureOutput:
    """The files written and the data drawn (read back from the figure's artists)."""

    paths: tuple[Path, ...]
    data: dict[str, Any] = field(default_factory=dict)
    figure: Any = field(default=None, repr=False, compare=False)


def metric_label(metric: str) -> str:
    """An axis label with the metric's unit, e.g. 'PSNR [dB]' (a metric of unknown unit as is)."""
    unit = METRIC_UNITS.get(metric)
    return f"{metric} [{unit}]" if unit else metric


def heading(default: str, title: str = "", context: str = "") -> str:
    """The figure's heading: `title` when given, else `default` with `context` in parentheses."""
    if title:
        return title
    return f"{default} ({context})" if context else default


def _count_text(counts: Sequence[int], noun: str) -> str:
    """'24 slices', or '21-24 slices' when the runs differ."""
    low, high = min(counts), max(counts)
    return f"{low} {noun}" if low == high else f"{low}-{high} {noun}"


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


#: what names sftkd as the writer of a figure, in its metadata: PNG's Software, PDF's Creator
SOFTWARE = f"sftkd {__version__}"
_METADATA: dict[str, dict[str, str]] = {"png": {"Software": SOFTWARE}, "pdf": {"Creator": SOFTWARE}}
#: how each format starts, and the bytes its metadata holds when sftkd wrote it (matplotlib writes
#: PNG text as a tEXt chunk, and the PDF info dictionary uncompressed)
_SIGNED: dict[str, tuple[bytes, bytes]] = {"png": (b"\x89PNG", b"tEXtSoftware\x00sftkd "),
                                           "pdf": (b"%PDF", b"/Creator (sftkd ")}


def figure_paths(stem: Path) -> tuple[Path, ...]:
    """`stem`.png and `stem`.pdf, the files `save_figure` writes.

    A stem ending in one of those formats names the figure itself: 'out/att.png' gives
    out/att.png and out/att.pdf (not att.png.png).
    """
    stem = Path(stem)
    if stem.suffix.lower().lstrip(".") in FORMATS:
        stem = stem.with_suffix("")
    return tuple(stem.with_name(f"{stem.name}.{fmt}") for fmt in FORMATS)


def written_by_sftkd(data: bytes) -> bool:
    """Whether `data` (a PNG or PDF file's bytes) is a figure sftkd wrote: its metadata says so."""
    return any(data.startswith(start) and mark in data for start, mark in _SIGNED.values())


def check_figure_targets(stem: Path, flag: str, force: bool) -> None:
    """Refuse in one line, before any work, figure files `save_figure` would replace that sftkd did
    not write (unless `force`), or that sftkd reads from a run or a dataset (even with `force`)."""
    for path in figure_paths(stem):
        check_output_file(path, flag, force, written_by_sftkd,
                          f"a figure sftkd wrote (expected metadata Software or Creator '{SOFTWARE}'; "
                          "figures written by an sftkd older than this mark carry none: --force once)")


def save_figure(figure, stem: Path) -> tuple[Path, ...]:
    """Write `figure_paths(stem)` (parent folders created), each signed as sftkd's in its metadata
    and atomically (drawn in memory, then a temporary sibling created exclusively, never through a
    link, renamed into place); returns the paths. Callers writing where the user points first call
    `check_figure_targets`."""
    paths = figure_paths(stem)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, fmt in zip(paths, FORMATS):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, metadata=_METADATA[fmt])
        try:  # a crash never leaves a truncated figure under the final name
            replace_atomically(path, buffer.getbuffer())
        except OSError as exc:
            raise SftkdError(f"{path}: could not write ({os_error_text(exc)})") from None
    return paths


# ----------------------------------------------------------------------------- inputs


def read_per_slice(path: str | Path, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """The named columns of a per_slice.csv as float arrays (a clear error when one is missing)."""
    path = Path(path)
    if not path.is_file():
        raise SftkdError(f"{path}: missing; run `sftkd evaluate` on the run first")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [m for m in metrics if m not in fields]
        if missing:
            raise SftkdError(f"{path}: no column {missing[0]!r} (has {', '.join(fields)})")
        rows = list(reader)
    try:
        return {m: np.array([float(row[m]) for row in rows], dtype=np.float64) for m in metrics}
    except ValueError:
        raise SftkdError(f"{path}: expected numbers in columns {', '.join(metrics)}") from None


def read_history(path: str | Path, key: str = CURVE_KEY) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values of `key`) from a history.jsonl; lines without the key are left out."""
    path = Path(path)
    if not path.exists():
        raise SftkdError(f"{path}: missing; the run has not finished an epoch yet")
    from sftkd_cli.runs import read_history_file

    epochs, values = [], []
    for row in read_history_file(path):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epochs.append(int(row["epoch"]))
            values.append(float(value))
    return np.asarray(epochs), np.asarray(values, dtype=np.float64)


def read_recon_slice(path: str | Path, volume: str, index: int) -> np.ndarray:
    """One reconstructed slice from a recon.h5: `index` is the slice number stored in the volume."""
    path = Path(path)
    if not path.is_file():
        raise SftkdError(f"{path}: missing; evaluate the run without --no-recon")
    with h5py.File(path, "r") as handle:
        check_in_file(handle, volume, str(path))
        if volume not in handle:
            raise SftkdError(f"{path}: no volume {volume!r} (has {', '.join(handle)})")
        data = h5_array(handle, volume, str(path))
        slices = [int(s) for s in data.attrs.get("slices", range(data.shape[0]))]
        if index not in slices:
            raise SftkdError(f"{path}: volume {volume} has no slice {index} (has {slices[0]}..{slices[-1]})")
        return np.asarray(data[slices.index(index)], dtype=np.float32)


# ----------------------------------------------------------------------------- box plots


def box_plots(
    runs: Mapping[str, Mapping[str, np.ndarray]],
    stem: Path,
    metrics: Sequence[str] = BOX_METRICS,
    title: str = "",
    context: str = "",
) -> FigureOutput:
    """One box plot per metric, one box per run (label -> {metric: per-slice values}).

    Boxes are the quartiles, whiskers reach the furthest values within 1.5 IQR (matplotlib's
    defaults), outliers are drawn as points. Each panel is titled 'Per-slice PSNR [dB] (N slices)'.
    `data[metric][label]` holds the drawn median, quartiles and whisker ends.
    """
    if not runs:
        raise SftkdError("box plots: no runs to plot")
    labels = list(runs)
    figure = new_figure(max(4.0, 1.1 * len(labels)) * len(metrics) / 1.4, 3.8)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    data: dict[str, Any] = {}
    for ax, metric in zip(axes, metrics):
        values = [np.asarray(runs[label][metric], dtype=np.float64) for label in labels]
        values = [v[np.isfinite(v)] for v in values]
        artists = ax.boxplot(values, showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("model", fontsize=8)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"Per-slice {metric_label(metric)} ({_count_text([len(v) for v in values], 'slices')})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        data[metric] = {label: _box_stats(artists, i) for i, label in enumerate(labels)}
    figure.suptitle(heading(f"Per-slice {' and '.join(metrics)} of each model", title, context), fontsize=10)
    return FigureOutput(save_figure(figure, stem), data, figure)


def _box_stats(artists: dict[str, list], i: int) -> dict[str, float]:
    """Median, quartiles and whisker ends of box `i`, read from the drawn lines."""
    box_y = np.asarray(artists["boxes"][i].get_ydata(), dtype=np.float64)
    low_whisker = np.asarray(artists["whiskers"][2 * i].get_ydata(), dtype=np.float64)
    high_whisker = np.asarray(artists["whiskers"][2 * i + 1].get_ydata(), dtype=np.float64)
    return {
        "median": float(artists["medians"][i].get_ydata()[0]),
        "q1": float(box_y.min()),
        "q3": float(box_y.max()),
        "whisker_low": float(low_whisker.min()),
        "whisker_high": float(high_whisker.max()),
        "outliers": np.asarray(artists["fliers"][i].get_ydata(), dtype=np.float64).tolist(),
    }


# ----------------------------------------------------------------------------- curves


def validation_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    stem: Path,
    ylabel: str = CURVE_LABELS[CURVE_KEY][0],
    title: str = "",
    context: str = "",
    default_title: str = CURVE_LABELS[CURVE_KEY][1],
) -> FigureOutput:
    """One line per run (label -> (epochs, values)); `data[label]` = the drawn (x, y).

    The axes are titled `default_title` (or `title`), with `context` in parentheses.
    """
    if not curves:
        raise SftkdError("validation curves: no runs to plot")
    figure = new_figure(5.5, 3.6)
    ax = figure.subplots()
    data: dict[str, Any] = {}
    for label, (epochs, values) in curves.items():
        (line,) = ax.plot(epochs, values, marker="." if len(epochs) < 40 else None, label=label)
        data[label] = (np.asarray(line.get_xdata(), dtype=np.float64), np.asarray(line.get_ydata(), dtype=np.float64))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(heading(default_title, title, context), fontsize=10)
    return FigureOutput(save_figure(figure, stem), data, figure)


# ----------------------------------------------------------------------------- grid


def default_box(shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A centred square (y0, x0, height, width) of a third of the smaller side (at least 4 pixels)."""
    h, w = shape
    side = max(4, min(h, w) // 3)
    side = min(side, h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def error_scale(residues: Sequence[np.ndarray], percentile: float = ERROR_PERCENTILE) -> float:
    """Top of the shared error colour scale: the `percentile` of |error| pooled over every map.

    Pooling (rather than each map's own maximum) keeps one scale for all models, so a model with
    larger errors looks brighter; the percentile (rather than the maximum) keeps a few extreme
    pixels from pushing every map into the dark end, so the differences between models show.
    """
    pooled = np.concatenate([np.ravel(r) for r in residues]) if residues else np.zeros(1)
    return max(float(np.percentile(pooled, percentile)), 1e-6)


def _nice_factor(ratio: float) -> float:
    """The largest of ..., 0.5, 1, 2, 5, 10, 20, 50, ... not above `ratio` (> 0): the k of an error map's '×k'.

    The error scale is then the image scale / k, at or above the error percentile `ratio` was taken at.
    A ratio that is not a positive number (NaN errors of a diverged model) gives 1: drawn, not a crash.
    """
    if not (math.isfinite(ratio) and ratio > 0):
        return 1.0
    decade = 10.0 ** math.floor(math.log10(ratio))
    if decade > ratio:  # log10 rounded up
        decade /= 10
    if decade * 10 <= ratio:  # log10 rounded down
        decade *= 10
    return next(decade * step for step in (5.0, 2.0, 1.0) if decade * step <= ratio)


def _add_inset(ax, image: np.ndarray, box: tuple[int, int, int, int], vmax: float, colour: str = "yellow"):
    """Outline `box` (y0, x0, h, w) on `ax` and show that crop zoomed in the panel's lower-right corner."""
    from matplotlib.patches import Rectangle

    y0, x0, bh, bw = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), bw, bh, fill=False, edgecolor=colour, linewidth=1))
    inset = ax.inset_axes((0.58, 0.0, 0.42, 0.42))
    inset.imshow(image[y0 : y0 + bh, x0 : x0 + bw], cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(1.2)
    return inset


def reconstruction_grid(
    target: np.ndarray,
    zero_filled: np.ndarray,
    recons: Mapping[str, np.ndarray],
    stem: Path,
    box: tuple[int, int, int, int] | None = None,
    title: str = "",
    input_label: str = "ZF",
    context: str = "",
    crop_errors: bool = False,
    percentile: float = ERROR_PERCENTILE,
) -> FigureOutput:
    """Fig. 3 for one slice: target, network input and each reconstruction; errors underneath.

    Top row: target, the network input (zero-filled "ZF"; "LR interp." for super-resolution,
    titled by `input_label`) and each model, on one grey scale (0 .. the target's maximum),
    each with the region `box` outlined and shown zoomed in an inset. Bottom row, under each
    model: |prediction - target| on one shared colour scale from 0 to the grey scale's top / k,
    so the maps are exactly the '|error| ×k' of their label: k is the largest of 1, 2, 5 x 10^n
    keeping that top at or above the `percentile` of all the models' errors pooled (brighter
    pixels are clipped), with its colourbar; with `crop_errors` the error maps show only
    `box`, and the percentile is taken there.

    `data` maps each panel's title to the array drawn, `data["insets"]` each image panel's
    title to its inset's array (`data["inset"]` the target's), `data["error_vmax"]` the top of
    the error scale, `data["error_factor"]` the k of its '|error| ×k' label and
    `data["error_percentile"]` the errors' percentile the scale covers.
    """
    target = np.asarray(target, dtype=np.float32)
    if target.ndim != 2 or np.shape(zero_filled) != target.shape:
        raise SftkdError(f"reconstruction grid: target {target.shape} and zero-filled {np.shape(zero_filled)} must be the same 2-D shape")
    for label, image in recons.items():
        if np.shape(image) != target.shape:
            raise SftkdError(f"reconstruction grid: {label} has shape {np.shape(image)}, expected {target.shape}")
    y0, x0, bh, bw = box or default_box(target.shape)
    if y0 < 0 or x0 < 0 or bh < 1 or bw < 1 or y0 + bh > target.shape[0] or x0 + bw > target.shape[1]:
        raise SftkdError(f"reconstruction grid: inset box {(y0, x0, bh, bw)} is outside the {target.shape} image")
    if not 0 < percentile <= 100:
        raise SftkdError(f"reconstruction grid: error percentile {percentile} must be in (0, 100]")

    residues = {label: np.abs(np.asarray(image, dtype=np.float32) - target) for label, image in recons.items()}
    if crop_errors:
        residues = {label: r[y0 : y0 + bh, x0 : x0 + bw] for label, r in residues.items()}
    top = {"target": target, input_label: np.asarray(zero_filled, dtype=np.float32)}
    top.update({label: np.asarray(image, dtype=np.float32) for label, image in recons.items()})
    columns = len(top)
    figure = new_figure(2.0 * columns + 0.9, 4.6 if residues else 2.4)
    axes = figure.subplots(2 if residues else 1, columns, squeeze=False)
    vmax_image = float(max(target.max(), 1e-6))
    covered = error_scale(list(residues.values()), percentile)
    factor = _nice_factor(vmax_image / covered)
    vmax_error = vmax_image / factor  # exactly the image scale / k: the label's '×k' is the amplification drawn
    data: dict[str, Any] = {"insets": {}, "error_vmax": vmax_error, "error_factor": factor, "error_percentile": covered}
    image_drawn = None
    for j, (label, image) in enumerate(top.items()):
        ax = axes[0][j]
        image_drawn = ax.imshow(image, cmap="gray", vmin=0.0, vmax=vmax_image, interpolation="nearest")
        data[label] = np.asarray(image_drawn.get_array())
        ax.set_title(label, fontsize=9)
        inset = _add_inset(ax, image, (y0, x0, bh, bw), vmax_image)
        data["insets"][label] = np.asarray(inset.get_images()[0].get_array())
    data["inset"] = data["insets"]["target"]
    figure.colorbar(image_drawn, ax=list(axes[0]), shrink=0.85, label="intensity [volume max = 1]")
    if residues:
        from matplotlib.colors import Normalize

        norm = Normalize(vmin=0.0, vmax=vmax_error)  # one object: every error map on the same scale
        for j in range(columns):
            axes[1][j].set_visible(False)
        offset = columns - len(residues)
        drawn = None
        for j, (label, residue) in enumerate(residues.items()):
            ax = axes[1][offset + j]
            ax.set_visible(True)
            drawn = ax.imshow(residue, cmap="inferno", norm=norm, interpolation="nearest")
            data[f"{label} residue"] = np.asarray(drawn.get_array())
            ax.set_title(f"|{label} - target|" + (" (inset)" if crop_errors else ""), fontsize=8)
            ax.text(0.03, 0.04, f"mean {float(residue.mean()):.2e}", transform=ax.transAxes, color="white", fontsize=7,
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
        figure.colorbar(drawn, ax=[axes[1][offset + j] for j in range(len(residues))], shrink=0.85,
                        label=f"|error| ×{factor:g} vs. image scale\n[0 to {vmax_error:.2g}; P{percentile:g} = {covered:.2g}]")
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    default = f"Reconstructions with zoomed insets; |error| maps ×{factor:g}" if residues else "Reconstructions with zoomed insets"
    figure.suptitle(heading(default, title, context), fontsize=10)
    return FigureOutput(save_figure(figure, stem), data, figure)


# ----------------------------------------------------------------------------- from runs


def box_plots_from_runs(
    runs: Mapping[str, Path], stem: Path, metrics: Sequence[str] = BOX_METRICS, title: str = "", context: str = ""
) -> FigureOutput:
    """Box plots from evaluated output folders (label -> folder holding per_slice.csv)."""
    values = {label: read_per_slice(Path(folder) / PER_SLICE_CSV, metrics) for label, folder in runs.items()}
    return box_plots(values, stem, metrics, title, context)


def validation_curves_from_runs(
    runs: Mapping[str, Path], stem: Path, key: str = CURVE_KEY, title: str = "", context: str = ""
) -> FigureOutput:
    """Validation curves from run directories (label -> run dir holding history.jsonl)."""
    curves = {label: read_history(Path(run) / HISTORY_JSONL, key) for label, run in runs.items()}
    curves = {label: curve for label, curve in curves.items() if len(curve[0])}
    ylabel, default_title = CURVE_LABELS.get(key, (key, f"{key} per epoch"))
    return validation_curves(curves, stem, ylabel, title, context, default_title)


def default_slice(recon: Path, volume: str | None = None, index: int | None = None) -> tuple[str, int]:
    """The slice figures show by default: the middle stored slice of the middle volume (by name) of a recon.h5."""
    with h5py.File(recon, "r") as handle:
        names = sorted(handle)
        volume = volume if volume is not None else names[len(names) // 2]
        check_in_file(handle, volume, str(recon))
        if volume not in handle:
            raise SftkdError(f"{recon}: no volume {volume!r}")
        data = h5_array(handle, volume, str(recon))
        slices = [int(s) for s in data.attrs.get("slices", range(data.shape[0]))]
    return volume, index if index is not None else slices[len(slices) // 2]


def reconstruction_grid_from_runs(
    dataset: str | Path,
    acceleration: float,
    runs: Mapping[str, Path],
    stem: Path,
    volume: str | None = None,
    index: int | None = None,
    box: tuple[int, int, int, int] | None = None,
    title: str = "",
    context: str = "",
    crop_errors: bool = False,
) -> FigureOutput:
    """The grid for one slice: target and ZF from the dataset, reconstructions from each recon.h5.

    Default slice: the middle stored slice of the middle volume (by name) of the first run's
    recon.h5. The default heading names the slice after `context` (e.g. the plan and group).
    """
    from sftkd_cli.data.dataset import load_manifest, load_volume
    from sftkd_cli.data.format import dataset_task
    from sftkd_cli.data.format import INPUT_LABELS

    if not runs:
        raise SftkdError("reconstruction grid: no runs to show")
    first = Path(next(iter(runs.values()))) / RECON_H5
    if volume is None or index is None:
        if not first.is_file():
            raise SftkdError(f"{first}: missing; evaluate the run without --no-recon")
        volume, index = default_slice(first, volume, index)
    arrays = load_volume(dataset, volume, acceleration)
    if not 0 <= index < arrays["image"].shape[0]:
        raise SftkdError(f"{dataset}: volume {volume} has no slice {index}")
    recons = {label: read_recon_slice(Path(folder) / RECON_H5, volume, index) for label, folder in runs.items()}
    where = ", ".join(part for part in (context, f"{volume}, slice {index}, {acceleration:g}x") if part)
    label = INPUT_LABELS[dataset_task(load_manifest(dataset))][1]
    target, zf = (np.abs(arrays[key][index]).astype(np.float32) for key in ("image", "zf"))  # complex data: magnitudes, as recon.h5
    return reconstruction_grid(target, zf, recons, stem, box, title, label, where, crop_errors)
