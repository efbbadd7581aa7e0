"""Readers of the files `sftkd evaluate` writes into a results folder: metrics.json and
per_slice.csv (paper convention) or per_volume.csv (fastmri), with one-line errors naming the file."""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sftkd_cli.errors import SftkdError


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation of one metric over the scores' units (slices; volumes in the
    fastmri convention); `volume_mean`: metrics.json's mean over volumes of the per-volume values
    (what the paper's reference evaluate.py reports), None where not read."""

    mean: float
    std: float
    volume_mean: float | None = None


def number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SftkdError(f"{where}: expected a number, got {value!r}")
    return float(value)


def number_or_nan(value: object, where: str) -> float:
    """A score: null (what evaluate writes for NaN or an infinity, which JSON cannot hold) reads as
    NaN; NaN and Infinity tokens of files written before that read as they are."""
    return float("nan") if value is None else number(value, where)


def optional_number(value: object, where: str) -> float | None:
    return None if value is None else number(value, where)


def optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def stats_block(block: object, where: str) -> dict[str, Stat]:
    if not isinstance(block, dict) or not block:
        raise SftkdError(f"{where}: expected an object of metrics with mean and std")
    stats = {}
    for metric, entry in block.items():
        if not isinstance(entry, dict):
            raise SftkdError(f"{where}.{metric}: expected {{'mean': ..., 'std': ...}}")
        for key in ("mean", "std"):
            if key not in entry:
                raise SftkdError(f"{where}.{metric}: no {key}; expected {{'mean': ..., 'std': ...}}")
        stats[metric] = Stat(number_or_nan(entry["mean"], f"{where}.{metric}.mean"),
                             number_or_nan(entry["std"], f"{where}.{metric}.std"),
                             number_or_nan(entry["volume_mean"], f"{where}.{metric}.volume_mean")
                             if "volume_mean" in entry else None)
    return stats


def read_per_unit(path: Path, unit: str = "slice") -> tuple[tuple[tuple[str, int], ...], dict[str, np.ndarray]]:
    """(volume, slice) keys and numeric columns of a per_slice.csv; of a per_volume.csv (`unit`
    "volume"), (volume, -1) keys and its columns except the slice count."""
    if not path.is_file():
        raise SftkdError(f"{path}: missing; re-run `sftkd evaluate {path.parent}`")
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SftkdError(f"{path}: unreadable ({exc})") from None
    keyed = ("volume", "slice") if unit == "slice" else ("volume", "slices")
    if any(name not in fields for name in keyed):
        raise SftkdError(f"{path}: expected columns {' and '.join(keyed)} (then one per metric)")
    if not records:
        raise SftkdError(f"{path}: no {unit}s")
    keys: list[tuple[str, int]] = []
    values: dict[str, list[float]] = {name: [] for name in fields if name not in (*keyed, "source_slice")}
    for line, record in enumerate(records, start=2):
        try:
            keys.append((record["volume"], int(record["slice"]) if unit == "slice" else -1))
            for name, column in values.items():
                column.append(float(record[name]))
        except (TypeError, ValueError):
            raise SftkdError(f"{path}: line {line}: expected a volume id, an integer slice and numbers") from None
    if len(set(keys)) != len(keys):
        raise SftkdError(f"{path}: a (volume, slice) pair appears twice" if unit == "slice" else f"{path}: a volume appears twice")
    return tuple(keys), {name: np.asarray(column, dtype=np.float64) for name, column in values.items()}


#: per_slice.csv and per_volume.csv hold every score as Python writes a float (all its digits) and
#: metrics.json the same values' means: their means agree to rounding of the summation order
MEANS_RTOL = 1e-9


def checked_stats(label: str, stats: dict[str, Stat], columns: dict[str, np.ndarray], prefix: str,
                  scores_file: str) -> dict[str, Stat]:
    """`stats` after refusing a scores CSV whose means disagree with metrics.json (a stale or
    foreign file), a null mean that the CSV's values make infinite read as that infinity (evaluate
    writes an infinity, e.g. the PSNR mean with an exactly reconstructed slice, as null)."""
    out = dict(stats)
    for metric, stat in stats.items():
        values = columns.get(prefix + metric)
        if values is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            candidates = (float(np.mean(values)), float(np.nanmean(values)))
        if np.isnan(stat.mean) and not all(np.isfinite(candidates)):
            if np.isinf(candidates[1]):
                out[metric] = Stat(candidates[1], math.nan, stat.volume_mean)
            continue
        if not any(np.isclose(c, stat.mean, rtol=MEANS_RTOL, atol=0.0, equal_nan=True) for c in candidates):
            raise SftkdError(
                f"{scores_file}: {prefix}{metric} mean {candidates[0]:.10g} does not match "
                f"metrics.json ({stat.mean:.10g}); re-run `sftkd evaluate {label}`"
            )
    return out
