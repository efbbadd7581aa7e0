"""The prepared dataset's format: the names and keys `prepare-data` writes and every reader expects.

One home for what the writer (`sftkd_cli.data.prepare`) and the readers (`data.dataset`,
evaluate, export, report) must agree on: the format number, the manifest's file name and keys,
the h5 group names per task, and what the network input is called. Light on purpose (no NumPy,
no h5py): command help and the report import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sftkd_cli.acquisition import TASKS
from sftkd_cli.errors import SftkdError, did_you_mean, names_shown

__all__ = [
    "FORMAT", "INPUT_LABELS", "MANIFEST", "MANIFEST_KEYS", "MASKS", "NORMALISATION", "PROVENANCE_ATTRS", "TASKS",
    "acceleration_key", "check_holds", "check_volume_slice", "group_key", "mask_axis",
]

#: version of the dataset layout (h5 attribute and manifest "format")
FORMAT = 1
#: the dataset's description, beside its h5 files
MANIFEST = "manifest.json"
#: the dataset's folder of fixed masks (`masks/<group>.npy`)
MASKS = "masks"
#: keys every manifest written by prepare-data has; a manifest without them is not sftkd's
#: ("acquisition" is newer and optional: older datasets lack it)
MANIFEST_KEYS: tuple[str, ...] = ("format", "image_size", "accelerations", "splits", "volumes", "mask", "options", "inputs")
#: how the images were scaled to [0, 1] (h5 attribute and manifest "normalisation")
NORMALISATION = "x / max: negatives clipped to 0, divided by the source volume maximum (attr max)"
#: attributes of a volume's h5 file saying where its pixels come from (`affine`: NIfTI inputs,
#: in datasets prepared since sftkd wrote it); evaluate copies them into recon.h5
PROVENANCE_ATTRS: tuple[str, ...] = ("source", "source_file", "max", "normalisation", "voxel_size", "affine", "acquisition")
#: what the network input is called in tables and figures, per task: (long, short)
INPUT_LABELS: dict[str, tuple[str, str]] = {"recon": ("zero-filled", "ZF"), "sr": ("LR interpolated", "LR interp.")}


def dataset_task(manifest: Mapping[str, Any]) -> str:
    """What a dataset was prepared for, from its manifest or a record of it: 'recon' (also datasets
    older than tasks) or 'sr'."""
    return str(manifest.get("task", "recon"))


def acceleration_key(acceleration: float) -> str:
    """Group name of an acceleration in the h5 files and manifest: 4.0 -> 'acc4', 2.5 -> 'acc2.5'."""
    return f"acc{float(acceleration):g}"


def group_key(task: str, factor: float) -> str:
    """Group name of a task's factor: ('recon', 4) -> 'acc4' (acceleration), ('sr', 4) -> 'sr4' (scale)."""
    return f"sr{float(factor):g}" if task == "sr" else acceleration_key(factor)


def mask_axis(mask: Mapping[str, Any], group: str) -> int | None:
    """The axis of one acceleration's whole sampled lines in a manifest's `mask` section (a user's
    mask records its own; generated ones share the section's), None for a mask of no whole lines."""
    entry = mask.get("per_acceleration", {}).get(group, {})
    axis = entry["axis"] if isinstance(entry, dict) and "axis" in entry else mask.get("axis", 0)
    return None if axis is None else int(axis)


def check_holds(manifest: Mapping[str, Any], shown: str, acceleration: tuple[float, str],
                split: tuple[str, str] | None = None, why: str = "") -> None:
    """The dataset at `shown` (its manifest) must hold the acceleration (sr: the scale) and the
    split, each given as (value, where it came from: a recipe key or an option); else one line
    naming that; for the split, `why` it matters ('; evaluate would refuse it after training')
    and the nearest split."""
    task, (factor, where) = dataset_task(manifest), acceleration
    if group_key(task, factor) not in {group_key(task, a) for a in manifest["accelerations"]}:
        listed = ", ".join(f"{float(a):g}" for a in manifest["accelerations"])
        raise SftkdError(f"{where}: {'scale' if task == 'sr' else 'acceleration'} {float(factor):g} not in dataset "
                         f"{shown} (has {listed})")
    splits = [str(s) for s in manifest["splits"]]
    if split is not None and split[0] not in splits:
        raise SftkdError(f"{split[1]}: split {split[0]!r} not in dataset {shown} (has {', '.join(splits)}){why}"
                         f"{did_you_mean(split[0], splits)}")


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """manifest.json's bytes as sftkd writes them (what `dataset.dataset_fingerprint` hashes)."""
    return (json.dumps(manifest, indent=2) + "\n").encode()


def check_volume_slice(manifest: Mapping[str, Any], shown: str, volume: str | None, index: int | None,
                       keys: tuple[str, str], split: str | None = None) -> None:
    """A slice to draw must be in the dataset at `shown` (its manifest): `volume` one of the
    dataset's (of `split`'s when given), `index` a slice of it (without `volume`: of the middle
    volume by name, the figures' default). `keys` name the volume and the slice where they came
    from (figures.volume and figures.slice, or --attention-slice twice) in the one error line;
    compare --attention and reproduce's figures share it so that both read alike."""
    volume_key, slice_key = keys
    names = sorted(manifest["splits"][split] if split is not None else manifest["volumes"])
    group = f"split {split!r}" if split is not None else "the dataset"
    among = f"split {split!r} of dataset {shown}" if split is not None else f"dataset {shown}"
    if volume is not None and volume not in names:
        raise SftkdError(f"{volume_key}: {volume!r} is not a volume of {among} (has {names_shown(names)})"
                         f"{did_you_mean(volume, names)}")
    if index is None or not names:
        return
    drawn = volume if volume is not None else names[len(names) // 2]
    slices = int(manifest["volumes"][drawn]["slices"])
    if not 0 <= index < slices:
        which = f"volume {drawn}" if volume is not None else f"volume {drawn} (the middle one of {group}; no {volume_key})"
        raise SftkdError(f"{slice_key}: {index} is not a slice of {which} in dataset {shown} "
                         f"(it has {slices}: 0 to {slices - 1})")
