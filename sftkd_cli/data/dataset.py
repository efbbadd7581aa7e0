"""Reading a prepared dataset: the manifest, its fingerprint, and a torch Dataset of slices.

`SliceDataset(root, split, acceleration)` yields one dict per slice:
    target (1,H,W) float32, zf (1,H,W) float32, kspace (1,H,W) complex64, mask (1,H,W) float32,
    volume (str), slice (int: index within the stored volume).
Slices are read lazily from the h5 files (each process opens its own handles on first access,
since h5py handles cannot be pickled or shared across fork), or all loaded at construction with
`cache=True` (data.cache) while they fit `CACHE_MEMORY_SHARE` of the memory available; a larger
split is read from disk and `cache_note` says so. `max_slices=n` keeps the first n slices of the
split (data.max_train_slices / max_val_slices), cut before anything is cached. Problems
(missing manifest, unknown split or acceleration, missing or corrupt h5 file) raise SftkdError
naming the file or value.

The dataset's task (manifest "task": recon, or sr for super-resolution; recon when absent)
decides which groups are read: `acc{a:g}` (acceleration a) or `sr{s:g}` (scale s, given in the
`acceleration` argument). For sr, zf is the interpolated low-resolution image and mask the
central k-space box. `SliceDataset(..., task=...)` refuses a dataset prepared for another task.

Complex datasets (manifest acquisition values "complex", e.g. fastMRI raw k-space) store the full
k-space; their items are made when read (`sftkd_cli.data.complex_slices`): target (2,H,W) and zf
(2,H,W) real/imaginary, kspace (1,H,W) complex64 undersampled, mask (1,H,W), target_mag (1,h,w)
(fastMRI's magnitude target), volume, slice. `cache=True` holds such a split in memory only up to
`COMPLEX_CACHE_BYTES` (256 MiB); larger ones are read from disk a slice at a time. A split read
from disk keeps at most `MAX_OPEN_FILES` volume files open, whatever its kind.

`mask_per_sample=True` (recipe data.mask_per_sample, for the training split) draws a new mask for
every slice and epoch from the dataset's mask recipe, seeded (seed, epoch, volume, slice): call
`set_epoch(epoch)` (or `set_dataset_epoch`) before each epoch. The stored images (magnitude) or the
full k-space (complex) are undersampled on the fly, so resuming draws the same masks.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.data.complex_slices import (
    COMPLEX_CACHE_BYTES, check_complex_file, check_drawable, check_signal, check_stored, complex_item, is_complex,
    per_sample_spec, read_complex, sample_mask, target_size,
)
from sftkd_cli.data.output import check_mask_files
from sftkd_cli.data.format import FORMAT, MANIFEST, PROVENANCE_ATTRS, TASKS, dataset_task, group_key, manifest_bytes
from sftkd_cli.files import display_path, read_regular_bytes
from sftkd_cli.h5_data import h5_array
from sftkd_cli.errors import SftkdError, names_shown, os_error_text
from sftkd_cli.memory import available_bytes
from sftkd_cli.mri.fft import ifft2_np
from sftkd_cli.name_checks import check_split_name
from sftkd_cli.mri.masks import check_mask_acceleration, check_mask_values, undersample
from sftkd_cli.torchrun import local_processes, world_size


def load_manifest(root: str | Path) -> dict[str, Any]:
    """Read and check `root/manifest.json` (format, required keys)."""
    root = Path(root)
    path = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise SftkdError(f"{display_path(root)}: is a file; expected a prepared dataset folder (sftkd prepare-data --out)")
    if not root.is_dir():
        raise SftkdError(f"{display_path(root)}: dataset folder not found; run `sftkd prepare-data` first")
    if not path.exists() and not path.is_symlink():
        raise SftkdError(
            f"{display_path(root)}: not a prepared dataset (no {MANIFEST}); run `sftkd prepare-data`"
        )
    data = read_regular_bytes(path, MANIFEST)  # a FIFO or /dev/zero is refused, never read
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise SftkdError(
            f"{display_path(path)}: unreadable ({exc}); expected JSON written by prepare-data"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise SftkdError(f"{display_path(path)}: format {found!r}, expected {FORMAT}")
    for key in ("image_size", "accelerations", "splits", "volumes"):
        if key not in manifest:
            raise SftkdError(f"{display_path(path)}: missing key {key!r}")
    _check_manifest(manifest, display_path(path))
    return manifest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest(manifest: dict[str, Any], where: str) -> None:
    """The types the readers rely on, so that a damaged manifest is one clear line, not a KeyError."""
    if dataset_task(manifest) not in TASKS:
        raise SftkdError(f"{where}: task {manifest.get('task')!r}, expected one of {', '.join(TASKS)}")
    size = manifest["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
        raise SftkdError(f"{where}: image_size {size!r}, expected [H, W] (two positive integers)")
    accs = manifest["accelerations"]
    if not (isinstance(accs, list) and accs and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in accs)):
        raise SftkdError(f"{where}: accelerations {accs!r}, expected a non-empty list of numbers")
    splits = manifest["splits"]
    if not (isinstance(splits, dict) and all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in splits.values())):
        raise SftkdError(f"{where}: splits, expected a mapping of split name -> list of volume ids")
    for name in splits:  # a split names an evaluation folder (eval-split-<split>/): never a path
        check_split_name(name, f"{where}: split")
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        for vid in ids:
            if vid in seen:
                where_else = "twice in split " + name if seen[vid] == name else f"in splits {seen[vid]} and {name}"
                raise SftkdError(f"{where}: volume {vid!r} is listed {where_else}; expected each volume "
                                 "in one split, once (a training volume must never be scored)")
            seen[vid] = name
    volumes = manifest["volumes"]
    if not isinstance(volumes, dict):
        raise SftkdError(f"{where}: volumes, expected a mapping of volume id -> entry")
    for vid, entry in volumes.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("file"), str) and Path(entry["file"]).name == entry["file"]
        if not (ok and _is_int(entry.get("slices")) and entry["slices"] > 0):
            raise SftkdError(f"{where}: volumes.{vid}, expected {{\"file\": \"<id>.h5\", \"slices\": n > 0, ...}}")
    check_mask_files(manifest, where)  # export reads the mask files: never one outside the dataset


def dataset_fingerprint(root: str | Path) -> str:
    """sha256 (hex) of the manifest.json bytes: identifies a prepared dataset. The files' sizes that
    prepare-data records last ("file_bytes", for its own up-to-date check) are left out of a
    manifest as sftkd wrote it (`format.manifest_bytes`): the same data prepared again, by this
    sftkd or by one that recorded no sizes, keeps its fingerprint and so its runs. Any other
    manifest is hashed as it is, byte for byte."""
    data = read_regular_bytes(Path(root) / MANIFEST, MANIFEST)
    try:
        manifest = json.loads(data)
    except ValueError:
        manifest = None
    if isinstance(manifest, dict) and "file_bytes" in manifest and manifest_bytes(manifest) == data:
        data = manifest_bytes({k: v for k, v in manifest.items() if k != "file_bytes"})
    return hashlib.sha256(data).hexdigest()


def kspace_layout(manifest: dict[str, Any]) -> str:
    """'corner' or 'centered': how the prepared k-space is stored (datasets without a record: corner)."""
    mask = manifest.get("mask")
    return str(mask.get("layout", "corner")) if isinstance(mask, dict) else "corner"


def dataset_acquisition(manifest: dict[str, Any], root: str | Path | None = None) -> Acquisition:
    """What the dataset holds, the record a model is built for: the manifest's "acquisition", or
    for datasets prepared before it, its task, mask layout and image size (magnitude, one channel)."""
    size = (int(manifest["image_size"][0]), int(manifest["image_size"][1]))
    if "acquisition" in manifest:
        where = f"{display_path(Path(root) / MANIFEST)}: acquisition" if root is not None else "manifest acquisition"
        recorded = Acquisition.from_record(manifest["acquisition"], where)
        return recorded if recorded.image_size is not None else dataclasses.replace(recorded, image_size=size)
    return Acquisition(task=dataset_task(manifest), kspace_layout=kspace_layout(manifest), image_size=size)


def record_acquisition(record: dict[str, Any], where: str = "dataset record") -> Acquisition:
    """The acquisition of a `dataset_record` (a checkpoint's `trained_on`); records older than the
    acquisition entry are read from their task, k-space layout and image size."""
    if isinstance(record.get("acquisition"), dict):
        return Acquisition.from_record(record["acquisition"], f"{where} acquisition")
    return Acquisition.from_record({"task": dataset_task(record), "kspace_layout": record.get("kspace_layout", "corner"),
                                    "image_size": record.get("image_size")}, where)


def dataset_record(root: str | Path, acceleration: float) -> dict[str, Any]:
    """What a model is trained or scored on: the dataset's identity and acquisition.

    Kept in checkpoints (`trained_on`): `acquisition` is what the model is built for (its data
    consistency takes the k-space layout); the rest lets distill, evaluate and export refuse or
    label a model used on other data. task, image_size and kspace_layout repeat the acquisition's
    for readers of older checkpoints.
    """
    manifest = load_manifest(root)
    acquisition = dataset_acquisition(manifest, root)
    return {
        "path": str(root),
        "fingerprint": dataset_fingerprint(root),
        "task": acquisition.task,
        "acceleration": float(acceleration),
        "image_size": [int(s) for s in manifest["image_size"]],
        "kspace_layout": acquisition.kspace_layout,
        "acquisition": acquisition.record(),
    }


def check_task(manifest: dict[str, Any], root: str | Path, task: str, trained: str | Path | None = None) -> None:
    """Refuse a dataset prepared for another task than `task`: the recipe's data.task, or with
    `trained` the task the model of that run was trained for (a command taking no overrides)."""
    have = dataset_task(manifest)
    if task != have and trained is not None:
        raise SftkdError(
            f"{display_path(trained)}: its model was trained for task {task}, but dataset {display_path(root)} "
            f"was prepared for task {have}; expected a dataset prepared with --task {task}"
        )
    if task != have:
        raise SftkdError(
            f"data.task {task}: dataset {display_path(root)} was prepared for task {have}; "
            f"set data.task={have} or prepare the data with --task {task}"
        )


def check_acceleration(manifest: dict[str, Any], root: str | Path, acceleration: float) -> str:
    """The h5 group name of `acceleration` (sr: the scale), or an error listing the dataset's."""
    task = dataset_task(manifest)
    key = group_key(task, acceleration)
    have = [group_key(task, a) for a in manifest["accelerations"]]
    if key not in have:
        listed = ", ".join(f"{float(a):g}" for a in manifest["accelerations"])
        what = "scale" if task == "sr" else "acceleration"
        raise SftkdError(
            f"{what} {float(acceleration):g} not in dataset {display_path(root)} (has {listed})"
        )
    return key


def split_volumes(manifest: dict[str, Any], root: str | Path, split: str) -> list[str]:
    """Volume ids of a split, or an error when the split is unknown or empty."""
    splits = manifest["splits"]
    if split not in splits:
        raise SftkdError(f"split {split!r} not in dataset {display_path(root)} (has {', '.join(splits)})")
    if not splits[split]:
        filled = ", ".join(s for s, v in splits.items() if v)
        raise SftkdError(f"split {split!r} of dataset {display_path(root)} is empty (non-empty: {filled})")
    return list(splits[split])


#: at most this many volume files are kept open per process (the oldest is closed first): a
#: fastMRI or NIfTI training set can have ~1,000 files, near the usual limit of 1,024 open files
MAX_OPEN_FILES = 64

#: `cache=True` holds a split in memory only while it takes at most this share of the memory
#: available when it is opened (`memory.available_bytes`), shared among torchrun's processes on the
#: machine (each holds its own copy). A quarter, because the training split is opened and cached
#: first and the validation split then measures what is left: both together take under half
#: (1/4 + 1/4 * 3/4), leaving the rest to the model, its activations and optimiser, DataLoader
#: workers, and other programs or `reproduce --jobs` stages started alongside (which measured the
#: same memory). Reading from disk instead costs milliseconds a slice, little beside a training step.
CACHE_MEMORY_SHARE = 0.25

#: bytes a cached magnitude slice takes per pixel: image and zf float32, kspace complex64
_CACHED_PIXEL_BYTES = 16

#: dtype kind of each array a slice is read from: real float images, complex k-space
_KINDS = {"image": "f", "zf": "f", "kspace": "c"}


def _check_values(path: Path, arrays: dict[str, np.ndarray], where: str = "") -> None:
    """Refuse NaN/Inf, which would otherwise surface later as a NaN loss or NaN metrics."""
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise SftkdError(f"{display_path(path)}: {name}{where} contains NaN or Inf, expected finite values")


#: errors of reaching a file, not of its content: said as they are, without asking whether it is corrupt
_ACCESS_ERRORS = (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EIO)


#: h5py's words when HDF5 could not allocate memory while reading (a filter such as gzip fails
#: so when out of memory, and also on damaged data: the message cannot tell which)
_MEMORY_TEXTS = ("filter returned failure", "memory allocation failed")


def _read(path: Path, what: str, fn, hint: str = ""):
    """Run `fn` on an h5 file, turning h5py/OS errors into a one-line SftkdError (`hint`: added
    to a read that may have run out of memory)."""
    try:
        return fn()
    except SftkdError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EMFILE:  # a limit of this process, not the file
            raise SftkdError(f"{display_path(path)}: cannot open: too many open files in this process "
                             f"(raise the limit, e.g. `ulimit -n 4096`)") from exc
        if isinstance(exc, OSError) and exc.errno in _ACCESS_ERRORS:  # h5py's text repeats the path: the OS's words
            raise SftkdError(f"{display_path(path)}: cannot read {what} ({os.strerror(exc.errno)})") from exc
        if isinstance(exc, OSError) and any(text in str(exc) for text in _MEMORY_TEXTS):
            raise SftkdError(f"{display_path(path)}: {what} could not be read ({exc}): out of memory or a corrupt "
                             f"file{hint}") from exc
        raise SftkdError(f"{display_path(path)}: cannot read {what} ({exc}); is the file corrupt?") from exc


def _check_regular(path: Path) -> None:
    """Refuse, in one line, a dataset h5 file that is missing or is not a regular file (a folder,
    FIFO or device, on which h5py fails with a misleading error, or waits for ever on a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SftkdError(f"{display_path(path)}: file missing from the dataset; run prepare-data again") from None
    except OSError as exc:
        raise SftkdError(f"{display_path(path)}: cannot read ({os_error_text(exc)})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise SftkdError(f"{display_path(path)}: not a regular file ({kind}); expected the h5 file prepare-data "
                         "wrote there")


def load_volume(root: str | Path, volume: str, acceleration: float) -> dict[str, np.ndarray]:
    """All arrays of one volume at one acceleration: image, zf, kspace (S,H,W) and mask (H,W)."""
    root = Path(root)
    manifest = load_manifest(root)
    key = check_acceleration(manifest, root, acceleration)
    if volume not in manifest["volumes"]:
        listed = names_shown(sorted(manifest["volumes"]))
        raise SftkdError(f"volume {volume!r} not in dataset {display_path(root)} (has {listed})")
    path = root / manifest["volumes"][volume]["file"]
    _check_regular(path)

    def read() -> dict[str, np.ndarray]:
        with h5py.File(path, "r") as f:
            if is_complex(manifest):
                return _complex_volume(f, key)
            names = {"image": "image", "zf": f"{key}/zf", "kspace": f"{key}/kspace", "mask": f"{key}/mask"}
            return {kind: h5_array(f, name, display_path(path))[()] for kind, name in names.items()}

    return _read(path, f"volume {volume}", read)


def _complex_volume(f: h5py.File, key: str) -> dict[str, np.ndarray]:
    """A complex volume's arrays: image and zf complex64 (S,H,W) (ifft2c of the full and of the
    masked k-space), kspace (masked) complex64, mask (H,W) and target_mag (S,h,w)."""
    full, target_mag = read_complex(f, slice(None))
    mask = h5_array(f, f"{key}/mask", display_path(Path(f.filename)))[()]
    masked = full * mask
    return {"image": ifft2_np(full.astype(np.complex128), centered=True).astype(np.complex64),
            "zf": ifft2_np(masked.astype(np.complex128), centered=True).astype(np.complex64),
            "kspace": masked.astype(np.complex64), "mask": mask, "target_mag": target_mag}


class SliceDataset(Dataset):
    """2-D slices of one split of a prepared dataset at one acceleration (see module docstring)."""

    def __init__(
        self, root: str | Path, split: str, acceleration: float, cache: bool = False, task: str | None = None,
        mask_per_sample: bool = False, trained: str | Path | None = None, max_slices: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.acceleration = float(acceleration)
        self.manifest = load_manifest(self.root)
        if task is not None:
            check_task(self.manifest, self.root, task, trained)
        self.task = dataset_task(self.manifest)
        self.key = check_acceleration(self.manifest, self.root, self.acceleration)
        self._volumes = split_volumes(self.manifest, self.root, split)
        self.image_size = tuple(int(s) for s in self.manifest["image_size"])
        self.complex = is_complex(self.manifest)
        self.target_size = target_size(self.manifest, self.root) if self.complex else None
        self._paths: dict[str, Path] = {}
        self._index: list[tuple[str, int]] = []
        mask = None
        for volume in self._volumes:
            entry = self.manifest["volumes"].get(volume)
            if entry is None:
                raise SftkdError(
                    f"{display_path(self.root / MANIFEST)}: split {split} lists unknown volume {volume!r}"
                )
            path = self.root / entry["file"]
            self._paths[volume] = path
            slices, mask = self._check_file(path, int(entry["slices"]), mask)
            self._index += [(volume, s) for s in range(slices)]
        if max_slices > 0:  # the first slices, in split order; every file is still checked
            self._index = self._index[:max_slices]
            self._volumes = list(dict.fromkeys(volume for volume, _ in self._index))
        self._mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        self._mask_array = np.ascontiguousarray(mask, dtype=np.float32)
        self._mask_spec = per_sample_spec(self.manifest, self.root, self.acceleration) if mask_per_sample else None
        if self._mask_spec is not None:
            check_drawable(self._mask_spec, self.image_size, self.acceleration)
        self.epoch = 0
        self._handles: dict[str, h5py.File] = {}
        self._pid = os.getpid()
        self._cache: dict[str, dict[str, np.ndarray]] | None = None
        self.cache_note = ""  # why a split asked to be cached is read from disk instead ('' otherwise)
        if cache and self._fits_memory():
            counts = Counter(volume for volume, _ in self._index)  # slices 0..count-1 of each volume
            self._cache = {volume: self._load_all(volume, count) for volume, count in counts.items()}

    def _fits_memory(self) -> bool:
        """Whether the items may be held in memory: a complex split up to COMPLEX_CACHE_BYTES, any
        split up to CACHE_MEMORY_SHARE of the memory available (else `cache_note` says so)."""
        h, w = self.image_size
        if self.complex:
            th, tw = self.target_size  # type: ignore[misc]
            size = len(self._index) * (h * w * 8 + th * tw * 4)
            if size > COMPLEX_CACHE_BYTES:  # bounded: a large complex split is read from disk
                return False
        else:
            size = len(self._index) * h * w * _CACHED_PIXEL_BYTES
        available, processes = available_bytes(), local_processes(world_size())
        if available is None or size <= available * CACHE_MEMORY_SHARE / processes:
            return True
        shared = f", shared by {processes} processes" if processes > 1 else ""
        self.cache_note = (f"data.cache: the {self.split} split ({size / 2**20:,.0f} MiB) would take more than "
                           f"{CACHE_MEMORY_SHARE:.0%} of the memory available ({available / 2**20:,.0f} MiB{shared}); "
                           "its slices are read from disk as needed")
        return False

    def _check_file(self, path: Path, slices: int, mask: np.ndarray | None) -> tuple[int, np.ndarray]:
        """Open one h5 file once: datasets present with the expected shapes and the shared mask."""
        _check_regular(path)
        expected = (slices, *self.image_size)
        if self.complex:
            return self._check_mask(path, _read(path, "dataset", lambda: check_complex_file(
                path, self.key, slices, self.image_size, self.target_size)), slices, mask)

        def check() -> np.ndarray:
            with h5py.File(path, "r") as f:
                for name in ("image", f"{self.key}/zf", f"{self.key}/kspace"):
                    array = h5_array(f, name, display_path(path))
                    if tuple(array.shape) != expected:
                        raise SftkdError(
                            f"{display_path(path)}: {name} has shape {tuple(array.shape)}, "
                            f"expected {expected}"
                        )
                    check_stored(path, name, array)
                    kind = _KINDS[name.rsplit("/", 1)[-1]]
                    if array.dtype.kind != kind:
                        raise SftkdError(
                            f"{display_path(path)}: {name} has dtype {array.dtype}, "
                            f"expected {'complex' if kind == 'c' else 'real float'}"
                        )
                check_signal(path, "image", f["image"])
                return h5_array(f, f"{self.key}/mask", display_path(path))[()]

        return self._check_mask(path, _read(path, "dataset", check), slices, mask)

    def _check_mask(self, path: Path, file_mask: np.ndarray, slices: int, mask: np.ndarray | None) -> tuple[int, np.ndarray]:
        """The volume's mask must be a finite 0/1 (H, W) mask (checked per file, so a bad one is
        blamed on its own file), the split's (the first volume's), sampling as its acceleration says."""
        where = f"{display_path(path)}: {self.key}/mask"
        if tuple(file_mask.shape) != self.image_size:
            raise SftkdError(f"{where} has shape {tuple(file_mask.shape)}, expected {self.image_size}")
        check_mask_values(file_mask, where)
        if mask is not None and not np.array_equal(file_mask, mask):
            raise SftkdError(f"{display_path(path)}: {self.key} mask differs from the other volumes'")
        if mask is None and self.task == "recon":
            check_mask_acceleration(file_mask, self.acceleration, where)
        return slices, file_mask

    def _load_all(self, volume: str, count: int) -> dict[str, np.ndarray]:
        """The first `count` slices of a volume (all that the items use), for the cache."""
        path = self._paths[volume]
        first = slice(0, count)

        def read() -> dict[str, np.ndarray]:
            with h5py.File(path, "r") as f:
                if self.complex:
                    kspace, target_mag = read_complex(f, first)
                    return {"kspace": kspace, "target_mag": target_mag}
                return {kind: h5_array(f, name, display_path(path))[first] for kind, name in
                        (("image", "image"), ("zf", f"{self.key}/zf"), ("kspace", f"{self.key}/kspace"))}

        try:
            arrays = _read(path, "volume", read, "; data.cache=false reads slices as needed")
        except MemoryError:
            raise SftkdError(f"{display_path(path)}: too large to hold in memory (data.cache=true); "
                             "set data.cache=false to read slices from disk") from None
        if self.complex:
            _check_values(path, arrays)
            return arrays
        _check_values(path, {"image": arrays["image"], f"{self.key}/zf": arrays["zf"],
                             f"{self.key}/kspace": arrays["kspace"]})
        return arrays

    def _handle(self, volume: str) -> h5py.File:
        """This process's open handle of a volume's file (opened on first use)."""
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._handles = {}
            self._pid = os.getpid()
        handle = self._handles.get(volume)
        if handle is None:
            if len(self._handles) >= MAX_OPEN_FILES:  # many files: close the oldest
                self._handles.pop(next(iter(self._handles))).close()
            path = self._paths[volume]
            handle = _read(path, "file", lambda: h5py.File(path, "r"))
            self._handles[volume] = handle
        return handle

    def provenance(self, volume: str) -> dict[str, Any]:
        """Where a volume's slices come from, as prepare-data recorded it: `source_slice` (the
        index in the input of each stored slice) and the `PROVENANCE_ATTRS` its file has."""
        def read() -> dict[str, Any]:
            handle = self._handle(volume)
            found = {key: handle.attrs[key] for key in PROVENANCE_ATTRS if key in handle.attrs}
            return {"source_slice": np.asarray(h5_array(handle, "source_slice", display_path(self._paths[volume]))[()]), **found}

        return _read(self._paths[volume], "source_slice and attributes", read)

    @property
    def volumes(self) -> list[str]:
        """Volume ids of the split, in manifest order (the order of the items)."""
        return list(self._volumes)

    @property
    def mask(self) -> torch.Tensor:
        """The split's fixed mask, (1, H, W) float32."""
        return self._mask.clone()

    def __len__(self) -> int:
        return len(self._index)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose per-sample masks items get (data.mask_per_sample; no effect otherwise)."""
        self.epoch = int(epoch)

    @property
    def varies_by_epoch(self) -> bool:
        """Whether items change with `set_epoch` (per-sample masks)."""
        return self._mask_spec is not None

    def _sample_mask(self, volume: str, s: int) -> np.ndarray:
        """This item's mask: a new one per sample and epoch, or the split's fixed mask."""
        if self._mask_spec is None:
            return self._mask_array
        return sample_mask(self._mask_spec, self.image_size, self.acceleration, self.epoch, volume, s)  # type: ignore[arg-type]

    def _complex_item(self, volume: str, s: int) -> dict[str, Any]:
        if self._cache is not None:
            kspace, target_mag = self._cache[volume]["kspace"][s], self._cache[volume]["target_mag"][s]
        else:
            f = self._handle(volume)
            path = self._paths[volume]
            kspace, target_mag = _read(path, f"slice {s}", lambda: read_complex(f, s))
            _check_values(path, {"kspace": kspace, "target_mag": target_mag}, f" (slice {s})")
        return {**complex_item(kspace, self._sample_mask(volume, s), target_mag), "volume": volume, "slice": s}

    def __getitem__(self, index: int) -> dict[str, Any]:
        volume, s = self._index[index]
        if self.complex:
            return self._complex_item(volume, s)
        if self._cache is not None:
            arrays = self._cache[volume]
            image, zf, kspace = arrays["image"][s], arrays["zf"][s], arrays["kspace"][s]
        else:
            f = self._handle(volume)
            path = self._paths[volume]
            names = ("image", f"{self.key}/zf", f"{self.key}/kspace")
            image, zf, kspace = _read(path, f"slice {s}", lambda: tuple(h5_array(f, n, display_path(path))[s] for n in names))
            _check_values(path, {"image": image, f"{self.key}/zf": zf, f"{self.key}/kspace": kspace}, f" (slice {s})")
        if self._mask_spec is not None:  # undersample the stored image with this sample's mask
            mask = self._sample_mask(volume, s)
            kspace, zf = undersample(image, mask, centered=self._mask_spec["layout"] == "centered")
            return {"target": torch.from_numpy(np.asarray(image, dtype=np.float32))[None],
                    "zf": torch.from_numpy(zf)[None], "kspace": torch.from_numpy(kspace)[None],
                    "mask": torch.from_numpy(mask)[None], "volume": volume, "slice": s}
        return {
            "target": torch.from_numpy(np.asarray(image, dtype=np.float32))[None],
            "zf": torch.from_numpy(np.asarray(zf, dtype=np.float32))[None],
            "kspace": torch.from_numpy(np.asarray(kspace, dtype=np.complex64))[None],
            "mask": self._mask.clone(),
            "volume": volume,
            "slice": s,
        }

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open h5 handles (for spawned DataLoader workers)."""
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def close(self) -> None:
        """Close this process's open h5 handles."""
        for handle in getattr(self, "_handles", {}).values():
            try:
                handle.close()
            except Exception:
                pass
        self._handles = {}

    def __del__(self) -> None:
        self.close()


def _with_epochs(dataset: Any) -> Any:
    """The dataset itself or the one it wraps (`Subset.dataset`, ...) that has `set_epoch`, or None."""
    while dataset is not None and not hasattr(dataset, "set_epoch"):
        dataset = getattr(dataset, "dataset", None)
    return dataset


def set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Tell a dataset (a `SliceDataset`, or a `Subset` of one) which epoch is starting, so that
    per-sample masks (data.mask_per_sample) are those of that epoch; other datasets are left alone."""
    dataset = _with_epochs(dataset)
    if dataset is not None:
        dataset.set_epoch(epoch)


def dataset_varies_by_epoch(dataset: Any) -> bool:
    """Whether a dataset's items (or those of the dataset a `Subset` wraps) change with the epoch."""
    return bool(getattr(_with_epochs(dataset), "varies_by_epoch", False))
