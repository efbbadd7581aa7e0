"""Reading slices of a complex dataset (`data.complex_prepare`), and masks drawn per slice.

A complex volume file stores the full centred k-space (S, H, W) and fastMRI's magnitude target
`target_mag` (S, h, w), both divided by the volume's max; the mask is applied here, when a slice
is read (`complex_item`):
    kspace = mask * full k-space              complex64 (1, H, W)
    zf     = ifft2c(kspace) as real, imag     float32 (2, H, W)
    target = ifft2c(full k-space) as re, im   float32 (2, H, W)
    target_mag                                float32 (1, h, w)
with ifft2c fastMRI's (ifftshift -> orthonormal ifft2 -> fftshift), computed in complex64: the
precision the network sees (the results are float32), and 2-3x faster than complex128 per item
(24 -> 8-10 ms at fastMRI's 640x368), which every training step pays on the host.

A mask per sample (`sample_mask`): the dataset's generated mask kind, drawn with the seed
(seed, epoch, crc32(volume id), slice), so an epoch's masks do not depend on the order slices are
read in, and a resumed run draws the same ones.

Also the checks every volume file gets when a split is opened, magnitude (`data.dataset`) or
complex: an array is an array stored in its file (`h5_data.h5_array`), stores the bytes it declares (`check_stored`) and holds
signal (`check_signal`); each file is opened once for them.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from sftkd_cli.choices import FASTMRI_KINDS
from sftkd_cli.data.format import MANIFEST, acceleration_key, dataset_task, mask_axis
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import display_path
from sftkd_cli.h5_data import h5_array
from sftkd_cli.mri.fft import ifft2_np
from sftkd_cli.mri.masks import fastmri_center_fraction, make_mask

#: a complex dataset's split is held in memory (data.cache) only up to this many bytes of k-space
#: and targets (a smoke-sized set); beyond it slices are read from disk a slice at a time, so a
#: real folder is never cached whole (reading a stored slice costs little beside its two FFTs)
COMPLEX_CACHE_BYTES = 256 << 20


def is_complex(manifest: dict[str, Any]) -> bool:
    """Whether a prepared dataset's files hold complex data (raw k-space, e.g. fastMRI): the
    manifest's storage key "values" (its "acquisition" is what models must fit, checked by them)."""
    return manifest.get("values") == "complex"


def target_size(manifest: dict[str, Any], root: str | Path) -> tuple[int, int]:
    """The (h, w) of a complex dataset's magnitude targets (manifest "target_size")."""
    size = manifest.get("target_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise SftkdError(f"{display_path(Path(root) / MANIFEST)}: target_size {size!r}, expected [h, w] "
                         "(a complex dataset written by prepare-data)")
    return int(size[0]), int(size[1])


def _holds_signal(array: np.ndarray) -> bool:
    """Whether an array holds a value > 0 (real) or != 0 (complex k-space)."""
    return bool(np.any(array != 0)) if np.iscomplexobj(array) else bool(np.any(array > 0))


def check_signal(path: Path, name: str, dataset: h5py.Dataset) -> None:
    """Refuse an (S, H, W) dataset with no value > 0 (an all-zero volume): PSNR and SSIM take the
    volume maximum as their data range, so validation and evaluate could not score it. The middle
    slice's centre row is read first (nearly always enough), then slice by slice up to the first
    with signal: only an empty volume is read in full."""
    slices = int(dataset.shape[0])
    if slices == 0 or _holds_signal(dataset[slices // 2, dataset.shape[1] // 2]):
        return
    if any(_holds_signal(dataset[s]) for s in range(slices)):
        return
    values = dataset[()]
    peak = float(np.max(np.abs(values) if np.iscomplexobj(values) else values))
    raise SftkdError(f"{display_path(path)}: {name} maximum {peak:g} over its {slices} slices; expected > 0 "
                     "(the volume maximum is the PSNR/SSIM data range): drop this volume from the "
                     "manifest's splits or prepare the data again")


def check_stored(path: Path, name: str, dataset: h5py.Dataset) -> None:
    """Refuse a dataset that declares more data than the file stores (a tiny h5 claiming millions
    of slices of fill value), before anything is read or allocated. Only uncompressed datasets
    (image and zf, as prepare-data writes them) can be checked exactly."""
    if dataset.compression is not None:
        return
    declared = int(dataset.size) * int(dataset.dtype.itemsize)
    stored = int(dataset.id.get_storage_size())
    if stored < declared:
        raise SftkdError(
            f"{display_path(path)}: {name} declares shape {tuple(dataset.shape)} ({declared:,} bytes) but the file "
            f"stores {stored:,} bytes of it; expected the data prepare-data writes"
        )


def check_complex_file(path: Path, key: str, slices: int, image_size: tuple[int, int],
                       target: tuple[int, int]) -> np.ndarray:
    """Check one complex volume file (datasets, shapes, dtypes, stored bytes, signal) and return its `key` mask."""
    where = display_path(path)
    with h5py.File(path, "r") as f:
        for name, shape, kind in (("kspace", (slices, *image_size), "c"), ("target_mag", (slices, *target), "f"),
                                  (f"{key}/mask", tuple(image_size), "f")):
            array = h5_array(f, name, where)
            if tuple(array.shape) != shape:
                raise SftkdError(f"{where}: {name} has shape {tuple(array.shape)}, expected {shape}")
            if array.dtype.kind != kind:
                raise SftkdError(f"{where}: {name} has dtype {array.dtype}, expected {'complex' if kind == 'c' else 'real float'}")
            check_stored(path, name, array)
        check_signal(path, "target_mag", h5_array(f, "target_mag", where))
        check_signal(path, "kspace", h5_array(f, "kspace", where))
        return h5_array(f, f"{key}/mask", where)[()]


def read_complex(f: h5py.File, s: int | slice) -> tuple[np.ndarray, np.ndarray]:
    """The full k-space and magnitude target of slice(s) `s` of an open complex volume file (both
    stored in it: `h5_array`)."""
    where = display_path(Path(f.filename))
    return h5_array(f, "kspace", where)[s], h5_array(f, "target_mag", where)[s]


def complex_item(kspace: np.ndarray, mask: np.ndarray, target_mag: np.ndarray) -> dict[str, torch.Tensor]:
    """One slice's tensors from its full centred k-space (H, W), mask (H, W) and target (h, w)."""
    full = np.asarray(kspace, dtype=np.complex64)
    masked = full * np.asarray(mask, dtype=np.float32)
    image, zf = ifft2_np(full, centered=True), ifft2_np(masked, centered=True)
    return {
        "target": torch.from_numpy(np.stack([image.real, image.imag]).astype(np.float32)),
        "zf": torch.from_numpy(np.stack([zf.real, zf.imag]).astype(np.float32)),
        "kspace": torch.from_numpy(masked.astype(np.complex64))[None],
        "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
        "target_mag": torch.from_numpy(np.asarray(target_mag, dtype=np.float32))[None],
    }


def volume_seed(volume: str) -> int:
    """A stable 32-bit number for a volume id (crc32 of its UTF-8 bytes), for per-sample mask seeds."""
    return zlib.crc32(volume.encode("utf-8"))


def per_sample_spec(manifest: dict[str, Any], root: str | Path, acceleration: float) -> dict[str, Any]:
    """How the mask of `acceleration` was generated (kind, seed, centre fraction, layout, axis), to
    draw a new one per sample. Only that acceleration's mask matters: another one of the dataset
    may come from a file. Super-resolution data has a fixed k-space box, never a mask to draw."""
    task = dataset_task(manifest)
    if task != "recon":
        raise SftkdError(f"data.mask_per_sample: dataset {display_path(root)} is prepared for task {task}; "
                         "per-sample masks exist for the recon task only (set data.mask_per_sample=false)")
    key = acceleration_key(acceleration)
    mask = manifest.get("mask") if isinstance(manifest.get("mask"), dict) else {}
    entry = mask.get("per_acceleration", {}).get(key)
    origin = entry.get("origin") if isinstance(entry, dict) else None
    if origin == "file":
        raise SftkdError(f"data.mask_per_sample: the {float(acceleration):g}x mask of dataset {display_path(root)} "
                         "comes from a file (--mask-file); expected an acceleration whose mask was generated")
    if mask.get("kind") is None:
        raise SftkdError(f"data.mask_per_sample: dataset {display_path(root)} records no generated mask kind; "
                         "expected a dataset prepared with --mask-kind")
    axis = mask_axis(mask, key)
    return {"kind": str(mask["kind"]), "seed": int(mask.get("seed", 42)), "center_fraction": mask.get("center_fraction"),
            "layout": str(mask.get("layout", "corner")), "axis": 0 if axis is None else axis}


def check_drawable(spec: dict[str, Any], size: tuple[int, int], acceleration: float) -> None:
    """Refuse per-sample masks whose centre fraction rounds to no centre line on their axis (a
    dataset prepared before `make_mask` refused that): a mask drawn per sample could then miss
    k-space's centre (DC), and fastMRI-style kinds, which keep each other line with probability
    about 1/acc, could sample nothing at all (and many would be far off the labelled acceleration).
    sftkd's own kinds keep one centre line at least by default; fastMRI's default scales with acc."""
    kind, fraction = spec["kind"], spec["center_fraction"]
    if fraction is None and kind not in FASTMRI_KINDS:
        return
    n = size[spec["axis"]]
    fraction = fastmri_center_fraction(acceleration) if fraction is None else float(fraction)
    if round(n * fraction) == 0:
        if fraction > 0:
            least = math.ceil(0.5 / fraction)
            while round(least * fraction) == 0:  # Python rounds halves to even: round(0.5) is 0
                least += 1
            expected = f"at least {least} lines"
        else:
            expected = "a centre fraction above 0"
        nothing = " or sample nothing" if kind in ("fastmri", "fastmri-random") else ""
        raise SftkdError(
            f"data.mask_per_sample: a {kind} mask of {n} lines with centre fraction {fraction:g} has no "
            f"centre line, so a mask drawn per sample can miss k-space's centre (DC){nothing}; expected {expected} "
            "(or data.mask_per_sample=false)")


def sample_mask(spec: dict[str, Any], size: tuple[int, int], acceleration: float, epoch: int, volume: str,
                slice_index: int) -> np.ndarray:
    """The (H, W) mask of one sample in one epoch: seed (seed, epoch, crc32(volume), slice)."""
    seed = (spec["seed"], int(epoch), volume_seed(volume), int(slice_index))
    return make_mask(spec["kind"], size, acceleration, seed=seed, center_fraction=spec["center_fraction"],
                     layout=spec["layout"], axis=spec["axis"])
