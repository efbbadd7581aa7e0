"""Scores of one evaluated volume, and their summary over a split, in each scoring convention.

`evaluate` reconstructs a split volume by volume and hands each finished volume to its
convention's scorer (`SCORERS`); only the scores are kept, so memory holds one volume. The
summaries order volumes by name, so sums run in the same order whatever order volumes came in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from sftkd_cli.errors import SftkdError
from sftkd_cli.choices import FASTMRI_METRIC_NAMES, METRIC_NAMES
from sftkd_cli.metrics import score_fastmri, score_slices, score_volume, summarise_volumes
from sftkd_cli.run_files import SCORE_FILES

Volume = dict[str, np.ndarray]  # {slices, source_slice, target, zf, pred}: slice positions and indices in the input (S,), (S,H,W) images


def nan_mean_std(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and std ignoring NaN, without numpy's RuntimeWarning lines on stderr: NaN for both when
    every value is NaN, and std NaN when an infinity (PSNR of an exact slice) leaves it undefined."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # inf - inf inside nanstd
        return float(np.nanmean(values)), float(np.nanstd(values))


def summarise(per_slice: dict[str, np.ndarray], per_volume: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """mean/std over slices, and the mean over volumes of the per-volume values."""
    out = {}
    for name in METRIC_NAMES:
        mean, std = nan_mean_std(per_slice[name])
        out[name] = {"mean": mean, "std": std, "volume_mean": nan_mean_std([v[name] for v in per_volume])[0]}
    return out


class VolumeScores(NamedTuple):
    """The scores of one volume, all that is kept of it once scored (its images are dropped)."""

    name: str
    slices: int
    rows: list[dict[str, Any]]  # its csv rows: one per slice (paper), one (fastmri)
    model: dict[str, float]  # per-volume scores of the model
    zf: dict[str, float]  # and of the zero-filled input
    model_slices: dict[str, np.ndarray] | None = None  # per-slice scores (paper convention)
    zf_slices: dict[str, np.ndarray] | None = None


#: (the rows of each of the convention's CSVs, in `run_files.SCORE_CSVS` order; model summary; zf summary)
Scores = tuple[tuple[list[dict[str, Any]], ...], dict[str, Any], dict[str, Any]]


def score_paper_volume(name: str, v: Volume) -> VolumeScores:
    """Per-slice and per-volume scores of model and zero-filled input (the paper convention)."""
    ours, zf = score_slices(v["target"], v["pred"]), score_slices(v["target"], v["zf"])
    rows = []
    for i, index in enumerate(v["slices"]):
        row: dict[str, Any] = {"volume": name, "slice": int(index), "source_slice": int(v["source_slice"][i])}
        row.update({m: float(ours[m][i]) for m in METRIC_NAMES})
        row.update({f"ZF_{m}": float(zf[m][i]) for m in METRIC_NAMES})
        rows.append(row)
    return VolumeScores(name, len(v["slices"]), rows, score_volume(v["target"], v["pred"], ours),
                        score_volume(v["target"], v["zf"], zf), ours, zf)


def paper_volume_row(s: VolumeScores) -> dict[str, Any]:
    """A volume's per_volume.csv row in the paper convention (`metrics.score_volume`: PSNR and NMSE
    over the whole volume, the others the mean of its slices), the zero-filled input's as ZF_<m>."""
    return {"volume": s.name, "slices": s.slices, **{m: s.model[m] for m in METRIC_NAMES},
            **{f"ZF_{m}": s.zf[m] for m in METRIC_NAMES}}


def summarise_paper(scored: list[VolumeScores]) -> Scores:
    """((per-slice rows, per-volume rows), model summary, zf summary) over volumes in name order:
    mean/std over slices."""
    scored = sorted(scored, key=lambda s: s.name)
    cat = lambda field: {m: np.concatenate([getattr(s, field)[m] for s in scored]) for m in METRIC_NAMES}  # noqa: E731
    return (([row for s in scored for row in s.rows], [paper_volume_row(s) for s in scored]),
            summarise(cat("model_slices"), [s.model for s in scored]), summarise(cat("zf_slices"), [s.zf for s in scored]))


def score_fastmri_volume(name: str, v: Volume) -> VolumeScores:
    """fastMRI per-volume scores of model and zero-filled input (metrics.score_fastmri)."""
    ours, zf = score_fastmri(v["target"], v["pred"]), score_fastmri(v["target"], v["zf"])
    row = {"volume": name, "slices": len(v["slices"]), **ours, **{f"ZF_{m}": zf[m] for m in FASTMRI_METRIC_NAMES}}
    return VolumeScores(name, len(v["slices"]), [row], ours, zf)


def summarise_fastmri(scored: list[VolumeScores]) -> Scores:
    """((per-volume csv rows,), model summary, zf summary) in name order: mean and sample std over volumes."""
    scored = sorted(scored, key=lambda s: s.name)
    return (([s.rows[0] for s in scored],), summarise_volumes([s.model for s in scored]),
            summarise_volumes([s.zf for s in scored]))


#: per convention: how one volume is scored, and how the volumes' scores are summarised
SCORERS: dict[str, tuple[Callable[[str, Volume], VolumeScores], Callable[[list[VolumeScores]], Scores]]] = {
    "paper": (score_paper_volume, summarise_paper),
    "fastmri": (score_fastmri_volume, summarise_fastmri),
}
assert SCORERS.keys() == SCORE_FILES.keys()


def check_convention(convention: str) -> None:
    """`--convention` must name a score convention (`run_files.SCORE_FILES`)."""
    if convention not in SCORE_FILES:
        raise SftkdError(f"--convention {convention!r}: expected one of {', '.join(SCORE_FILES)}")
