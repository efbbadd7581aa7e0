"""Reading NIfTI volumes safely and turning them into stacks of 2-D slices.

Every check here raises `SftkdError` naming the file, so that a bad input ends in one clear
line. The array helpers are small pure functions (crop/pad, block-mean downsampling,
near-empty slice selection, normalisation) so that each can be tested against numpy.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sftkd_cli.choices import MIN_SIZE
from sftkd_cli.data.option_names import OptionError
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import display_path

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: the most memory one source volume may take once read (its header's shape x max(dtype, float32)
#: bytes); a 14 MB .nii.gz can declare gigabytes, so the header is checked before any voxel is read
MAX_VOLUME_BYTES = 2 << 30


def _one_line(exc: BaseException) -> str:
    """An exception as a short single line: 'Type: first line of message'."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextmanager
def _quiet_header_fixes() -> Iterator[None]:
    """While loading, nibabel logs to stderr the header problems it fixes itself (pixdim 0 set to 1,
    negative pixdim to its absolute value): voxel sizes only go into the manifest, and a size sftkd
    cannot use reads as 1 mm anyway (`voxel_size`), so those lines are silenced, by raising the
    level of nibabel's logger for the load only. Problems nibabel raises for still raise."""
    from nibabel import imageglobals

    logger = imageglobals.logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_nifti(path: Path):
    """Open a NIfTI file (header only) or raise a one-line error naming it."""
    import nibabel as nib

    if not path.is_file():
        raise SftkdError(f"{display_path(path)}: file not found")
    try:
        with _quiet_header_fixes():
            return nib.load(os.fspath(path))
    except Exception as exc:  # nibabel raises many different types for bad files
        raise SftkdError(
            f"{display_path(path)}: cannot read NIfTI ({_one_line(exc)}); expected a valid .nii/.nii.gz"
        ) from exc


def spatial_shape(img, path: Path) -> tuple[int, int, int]:
    """The 3-D shape of `img`, allowing trailing singleton dimensions; 4-D data is an error."""
    shape = tuple(int(s) for s in img.shape)
    core = list(shape)
    while len(core) > 3 and core[-1] == 1:
        core.pop()
    if len(core) != 3:
        raise SftkdError(
            f"{display_path(path)}: {len(shape)}-D image of shape {shape}, expected a 3-D volume"
        )
    if min(core) < 1:
        raise SftkdError(f"{display_path(path)}: empty image of shape {shape}, expected a 3-D volume")
    check_volume_size(img, path, shape)
    return core[0], core[1], core[2]


def check_volume_size(img, path: Path, shape: tuple[int, ...], limit: int | None = None) -> None:
    """Refuse a volume whose header declares more than `limit` bytes once read (shape x the larger
    of its stored dtype and float32), or voxel data starting beyond that: a gzip bomb is refused
    from its header, before decompressing anything."""
    try:
        itemsize = int(img.get_data_dtype().itemsize)
        offset = int(img.header.get("vox_offset", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        itemsize, offset = 8, 0
    limit = MAX_VOLUME_BYTES if limit is None else limit
    need = math.prod(shape) * max(itemsize, 4)
    if need > limit or offset > limit:
        raise SftkdError(
            f"{display_path(path)}: header declares shape {shape} ({need / 1e9:.1f} GB once read), more than the "
            f"{limit / (1 << 30):g} GiB limit per volume; expected a single 3-D volume"
        )


def check_gzip(path: Path, chunk: int = 1 << 20) -> None:
    """A gzip-compressed file read to its end, so that its CRC and length are checked: nibabel
    stops after the bytes its header asks for, so a damaged .nii.gz would otherwise give wrong
    voxels without a word."""
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(chunk):
                pass
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise SftkdError(f"{display_path(path)}: damaged gzip data ({_one_line(exc)}); is the file truncated or corrupt?") from exc


def read_volume(img, path: Path) -> np.ndarray:
    """Read the voxel data of a NIfTI image as float32 (X, Y, Z), validated.

    Raises when the file is truncated, corrupt (a .gz is checked whole) or unreadable, not 3-D,
    complex or RGB, contains NaN/Inf, or has no positive voxel (such a volume cannot be normalised).
    """
    shape = spatial_shape(img, path)
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise SftkdError(f"{display_path(path)}: complex voxels ({dtype}); expected magnitude images "
                         "(store their magnitude; complex k-space goes through `prepare-data fastmri`)")
    if dtype.kind not in "biuf":  # RGB24 / RGBA32 are structured: three or four values per voxel
        raise SftkdError(f"{display_path(path)}: RGB/structured voxels (dtype {dtype}); expected scalar "
                         "magnitude images (one number per voxel)")
    if path.name.lower().endswith(".gz"):
        check_gzip(path)
    try:
        # a scale factor beyond float32 (scl_slope 1e38 on int16) overflows to Inf, refused below in
        # one line: numpy's overflow warning would only add lines before it
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    except Exception as exc:  # truncated gzip, short data block, bad scaling...
        raise SftkdError(
            f"{display_path(path)}: cannot read voxel data ({_one_line(exc)}); is the file truncated?"
        ) from exc
    data = data.reshape(shape)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise SftkdError(f"{display_path(path)}: {bad} NaN/Inf voxel(s) (or values beyond float32's range), "
                         "expected finite values")
    if not np.any(data > 0):
        raise SftkdError(f"{display_path(path)}: no positive voxel (all zero or negative), expected magnitude images")
    return data


def voxel_size(img) -> tuple[float, float, float]:
    """The first three voxel sizes (mm) from the header; a size that is not a finite number (a
    sloppy header's NaN) reads as 1 mm, as a missing one does (the manifest must stay JSON)."""
    zooms = tuple(float(z) if math.isfinite(float(z)) else 1.0 for z in img.header.get_zooms()[:3])
    return zooms + (1.0,) * (3 - len(zooms))  # type: ignore[return-value]


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """Move the slice axis of a 3-D volume to the front: (S, H, W)."""
    return np.moveaxis(volume, axis, 0)


def check_slices(stack: np.ndarray, path: Path, shape: tuple[int, ...], axis: int, factor: int) -> np.ndarray:
    """`stack` (S, H, W), the slices of a volume of `shape` along `axis` after downsampling by
    `factor`, when they are at least MIN_SIZE x MIN_SIZE (what --size takes and training needs);
    else refused naming the file, rather than at the mask step or in training, which no longer
    know it. Only for slices kept at their own size: --size crops or pads them to it."""
    h, w = int(stack.shape[1]), int(stack.shape[2])
    if min(h, w) < MIN_SIZE:
        after = f" after --downsample {factor}" if factor > 1 else ""
        raise SftkdError(f"{display_path(path)}: image of shape {tuple(int(n) for n in shape)} has slices of {h}x{w} "
                         f"along axis {axis}{after}; expected slices of at least {MIN_SIZE}x{MIN_SIZE} "
                         "(another --slice-axis? --size H W pads them)")
    return stack


def downsample(stack: np.ndarray, factor: int) -> np.ndarray:
    """In-plane block mean by an integer factor over the last two axes (edges that do not fill a
    whole block are dropped). factor 1 returns the input unchanged."""
    if factor == 1:
        return stack
    s, h, w = stack.shape
    hh, ww = h // factor, w // factor
    if hh < 1 or ww < 1:
        raise OptionError("downsample", factor, f"too large for slices of {h}x{w}; expected at most {min(h, w)}")
    blocks = stack[:, : hh * factor, : ww * factor].reshape(s, hh, factor, ww, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


def crop_pad_offset(n: int, target: int) -> int:
    """Index in the uncropped axis of length `n` of index 0 after `crop_or_pad` to `target`:
    (n - target) // 2 when cropping, minus the (target - n) // 2 zeros padded before."""
    return (n - target) // 2 if n >= target else -((target - n) // 2)


def crop_or_pad(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop and/or zero-pad the last two axes to `size`.

    Cropping removes (n - target) // 2 rows/columns before the kept block; padding adds
    (target - n) // 2 zeros before and the rest after (`crop_pad_offset`).
    """
    out = stack
    for axis, target in zip((-2, -1), size):
        n = out.shape[axis]
        offset = crop_pad_offset(n, target)
        if n > target:
            out = np.take(out, np.arange(offset, offset + target), axis=axis)
        elif n < target:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (-offset, target - n + offset)
            out = np.pad(out, pad)
    return np.ascontiguousarray(out, dtype=np.float32)


def kept_slices(stack: np.ndarray, min_slice_mean: float) -> np.ndarray:
    """Indices of slices to keep: never all-zero slices, and with `min_slice_mean` > 0 only
    slices whose mean is at least that fraction of the whole stack's mean."""
    means = stack.mean(axis=(1, 2), dtype=np.float64)
    keep = np.any(stack != 0, axis=(1, 2))
    if min_slice_mean > 0:
        keep &= means >= min_slice_mean * float(stack.mean(dtype=np.float64))
    return np.flatnonzero(keep)
