"""Turn raw volumes from a `Source` into a prepared dataset directory (the `prepare-data` library).

Output (see COMMON conventions): one `<volume>.h5` per output volume with `image` (S,H,W) float32
in [0, 1], `source_slice` (S,) int32 (slice index in the source file) and one group
`acc{a:g}` per acceleration with `kspace` (masked, complex64), `zf` (float32) and `mask`;
`masks/acc{a:g}.npy`; and `manifest.json`.

Task `sr` (super-resolution, `--task sr`) writes one group `sr{s:g}` per scale factor s instead,
with the same three arrays: `mask` is the central round(H/s) x round(W/s) box of k-space (the
frequencies a low-resolution acquisition measures, `sr_box_mask`), `kspace` the image's k-space
inside it (zero outside) and `zf` = |IFFT(kspace)|: the low-resolution image interpolated back
to H x W by zero-padding its k-space (sinc interpolation). The manifest records "task": "sr" and
"scales"; its "accelerations" list holds the same factors, so every reader keys groups alike.

Processing of one source file, in order:
1. read and validate (3-D, finite, some positive voxel); clip negatives to 0 and divide by the
   volume maximum (recorded as the `max` attribute), so images are in [0, 1];
2. slice along the slice axis -> (S, H, W) (the demo reorients to RAS and slices axially);
3. optional in-plane block-mean downsampling by an integer factor;
4. drop all-zero slices and, with `min_slice_mean` > 0, slices whose mean is below that fraction
   of the stack's mean (before cropping);
5. centre crop / zero-pad to `size` (no resampling); drop slices that became all zero;
6. for each acceleration: one fixed mask for the whole dataset, k-space = mask * FFT(image),
   zero-filled = |IFFT(k-space)| (`sftkd_cli.mri.masks.undersample`); for task sr the mask is the
   central k-space box of each scale.

Safety: every input is validated before anything is written; the dataset is written to a
temporary sibling folder `.<name>.tmp-<pid>` (h5 files are built in memory and written with plain
file writes, so a full disk is one clear error) and moved into place at the end, so a failure,
Ctrl-C or SIGTERM leaves nothing behind (exit 130 / 143); temporary folders of dead processes are
removed by the next run. One process at a time prepares a folder (an exclusive lock on the
sibling file `.<name>.lock`). Re-running with the same options and unchanged inputs (sha256) is a
no-op; different options on an existing dataset need `force`, which replaces only the files the
old manifest lists: other files in the folder are kept. A non-empty folder whose manifest is not
sftkd's is never written. Input folders are never written.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sftkd_cli import __version__
from sftkd_cli.choices import MAX_SIZE, SOURCE_DEFAULTS  # noqa: F401  (per-source defaults of `prepare-data`)
from sftkd_cli.data.files import MAX_JSON_BYTES, check_writable, h5_image, read_regular_bytes, write_bytes_synced
from sftkd_cli.data.sources.base import SPLITS, Piece, Source, SourceFile, SplitRequest
from sftkd_cli.data.volumes import (
    crop_or_pad, display_path, downsample, kept_slices, load_nifti, read_volume, sha256_file,
    spatial_shape, voxel_size,
)
from sftkd_cli.errors import SftkdError, os_error_text
from sftkd_cli.mri.masks import LAYOUTS, MASK_KINDS, check_mask_acceleration, load_mask, make_mask, undersample

FORMAT = 1
MANIFEST = "manifest.json"
NORMALISATION = "x / max: negatives clipped to 0, divided by the source volume maximum (attr max)"
# Prepared stacks are kept in memory between validation and writing up to this many bytes;
# beyond it they are read again when written.
KEEP_IN_MEMORY_BYTES = 2 << 30
#: keys every manifest written by prepare-data has; a manifest without them is not sftkd's
MANIFEST_KEYS: tuple[str, ...] = ("format", "image_size", "accelerations", "splits", "volumes", "mask", "options", "inputs")

Progress = Callable[[str, int, int], None]


def acceleration_key(acceleration: float) -> str:
    """Group name of an acceleration in the h5 files and manifest: 4.0 -> 'acc4', 2.5 -> 'acc2.5'."""
    return f"acc{float(acceleration):g}"


#: what a dataset is prepared for: reconstruction from undersampled k-space, or super-resolution
TASKS: tuple[str, ...] = ("recon", "sr")
#: what the network input is called in tables and figures, per task: (long, short)
INPUT_LABELS: dict[str, tuple[str, str]] = {"recon": ("zero-filled", "ZF"), "sr": ("LR interpolated", "LR interp.")}


def group_key(task: str, factor: float) -> str:
    """Group name of a task's factor: ('recon', 4) -> 'acc4' (acceleration), ('sr', 4) -> 'sr4' (scale)."""
    return f"sr{float(factor):g}" if task == "sr" else acceleration_key(factor)


def sr_box_mask(shape: tuple[int, int], scale: float, layout: str = "corner") -> np.ndarray:
    """The k-space a low-resolution acquisition at `scale` measures: a (H, W) float32 0/1 mask.

    n = round(H / scale) rows and m = round(W / scale) columns of the lowest frequencies, the
    signed frequencies -(n // 2) .. n - 1 - n // 2 (those of an n-point DFT). `layout` "corner"
    (unshifted: frequency f at index f mod H) or "centered" (fftshift: f at H // 2 + f).
    """
    out = []
    for size in shape:
        n = min(size, max(1, math.floor(size / scale + 0.5)))
        freqs = np.arange(-(n // 2), n - n // 2)
        keep = np.zeros(size, dtype=bool)
        keep[freqs % size if layout == "corner" else freqs + size // 2] = True
        out.append(keep)
    return np.outer(out[0], out[1]).astype(np.float32)


@dataclass
class PrepareOptions:
    """Everything `prepare_dataset` needs besides the source and output folder.

    size: (H, W) centre crop/pad, or None to keep the native in-plane size (all volumes must agree).
    mask_files: acceleration -> mask file; other accelerations get a generated `mask_kind` mask.
    val/test: explicit group ids (patients for ACDC); *_fraction: seeded share of the groups
    (None: the source's default). force: rebuild an existing dataset made with other options.
    """

    size: tuple[int, int] | None = None
    slice_axis: int = 2
    downsample: int = 1
    accelerations: tuple[float, ...] = (4.0, 5.0)
    mask_kind: str = "random"
    mask_files: dict[float, Path] = field(default_factory=dict)
    mask_layout: str = "corner"
    center_fraction: float | None = None
    seed: int = 42
    val_fraction: float | None = None
    test_fraction: float | None = None
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    min_slice_mean: float = 0.0
    force: bool = False
    task: str = "recon"  # recon: undersampled k-space per acceleration | sr: low-resolution input per scale

    def validate(self) -> None:
        """Raise a one-line SftkdError for any value out of range."""
        if self.task not in TASKS:
            raise SftkdError(f"--task {self.task}: expected one of {', '.join(TASKS)}")
        if self.task == "sr" and self.mask_files:
            raise SftkdError("--mask-file: not used by --task sr (the scale fixes the central k-space box); remove it")
        if self.task == "sr" and self.center_fraction is not None:
            raise SftkdError("--center-fraction: not used by --task sr (the scale fixes the central k-space box); remove it")
        if self.size is not None:
            if len(self.size) != 2 or any(int(s) != s or s < 4 or s > MAX_SIZE for s in self.size):
                raise SftkdError(f"--size {self.size}: expected two integers H W, "
                                 f"each from 4 to {MAX_SIZE}")
        if self.slice_axis not in (0, 1, 2, -1, -2, -3):
            raise SftkdError(f"--slice-axis {self.slice_axis}: expected 0, 1 or 2 (or -1 for the last)")
        if self.downsample < 1:
            raise SftkdError(f"--downsample {self.downsample}: expected an integer >= 1")
        if not self.accelerations:
            raise SftkdError("--acc: expected at least one acceleration")
        for acc in self.accelerations:
            if not (math.isfinite(acc) and acc > 1):
                raise SftkdError(f"--acc {acc:g}: expected a number > 1")
        keys = [acceleration_key(a) for a in self.accelerations]
        if len(set(keys)) != len(keys):
            raise SftkdError(f"--acc {', '.join(f'{a:g}' for a in self.accelerations)}: repeated value")
        for acc in self.mask_files:
            if acceleration_key(acc) not in keys:
                raise SftkdError(
                    f"--mask-file {acc:g}=...: acceleration {acc:g} is not among --acc "
                    f"{', '.join(f'{a:g}' for a in self.accelerations)}"
                )
        if self.mask_kind not in MASK_KINDS:
            raise SftkdError(f"--mask-kind {self.mask_kind}: expected one of {', '.join(MASK_KINDS)}")
        if self.mask_layout not in LAYOUTS:
            raise SftkdError(f"--mask-layout {self.mask_layout}: expected one of {', '.join(LAYOUTS)}")
        if self.center_fraction is not None and not 0 <= self.center_fraction <= 1:
            raise SftkdError(f"--center-fraction {self.center_fraction:g}: expected a number in [0, 1]")
        if self.seed < 0:
            raise SftkdError(f"--seed {self.seed}: expected a non-negative integer")
        if not 0 <= self.min_slice_mean < 1:
            raise SftkdError(f"--min-slice-mean {self.min_slice_mean:g}: expected a number in [0, 1)")

    def record(self) -> dict[str, Any]:
        """The options as recorded in the manifest (JSON types, `force` left out)."""
        out = asdict(self)
        out.pop("force")
        if self.task == "recon":  # datasets prepared before tasks existed stay up to date
            out.pop("task")
        out["size"] = None if self.size is None else [int(s) for s in self.size]
        out["slice_axis"] = self.slice_axis % 3
        out["accelerations"] = [float(a) for a in self.accelerations]
        out["mask_files"] = {
            acceleration_key(a): str(Path(p).resolve()) for a, p in sorted(self.mask_files.items())
        }
        out["val"], out["test"] = list(self.val), list(self.test)
        return out

    def split_request(self) -> SplitRequest:
        """The split settings handed to the source."""
        return SplitRequest(
            self.val_fraction, self.test_fraction, tuple(self.val), tuple(self.test), self.seed
        )


@dataclass
class PrepareResult:
    """What `prepare_dataset` did: the dataset folder, its manifest, and whether it was up to date."""

    out: Path
    manifest: dict[str, Any]
    unchanged: bool
    seconds: float


@dataclass
class _Prepared:
    """One validated source file: its prepared stack (or None when not kept in memory)."""

    file: SourceFile
    stack: np.ndarray | None
    kept: np.ndarray
    max: float
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int]


# --------------------------------------------------------------------------- option parsing helpers

_MASK_PAIR = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*=(.+)$")


def parse_accelerations(values: list[str] | None) -> tuple[float, ...]:
    """'4', '5' or '4,5' (repeatable) -> (4.0, 5.0); empty -> ()."""
    out: list[float] = []
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(float(part))
            except ValueError:
                raise SftkdError(f"--acc {part}: expected a number such as 4 or 2.5") from None
    return tuple(out)


def default_accelerations(task: str, mask_files: dict[float, Path]) -> tuple[float, ...]:
    """What prepare-data prepares without --acc: the mask files' accelerations, else 4 (sr) or 4 and 5."""
    return tuple(sorted(mask_files)) if mask_files else (4.0,) if task == "sr" else (4.0, 5.0)


def parse_mask_files(values: list[str] | None, accelerations: tuple[float, ...]) -> dict[float, Path]:
    """'ACC=PATH' pairs, or one bare PATH when there is exactly one acceleration."""
    out: dict[float, Path] = {}
    for value in values or []:
        match = _MASK_PAIR.match(value)
        if match:
            acc, path = float(match.group(1)), Path(match.group(2).strip())
        elif len(accelerations) == 1:
            acc, path = accelerations[0], Path(value)
        else:
            raise SftkdError(
                f"--mask-file {value}: expected ACC=PATH (e.g. 4={value}); a bare path needs exactly "
                "one --acc"
            )
        if acc in out:
            raise SftkdError(f"--mask-file {value}: acceleration {acc:g} already has a mask file")
        out[acc] = path
    return out


# --------------------------------------------------------------------------- output folder checks


def _check_out(out: Path, source: Source) -> None:
    """The output must not be a file, nor the input folder, nor inside or around it."""
    if out.exists() and not out.is_dir():
        raise SftkdError(f"--out {display_path(out)}: is a file; expected a folder (new, empty or a dataset)")
    inputs = source.input_path()
    if inputs is None:
        return
    o, i = out.resolve(), inputs.resolve()
    if o == i or i in o.parents:
        raise SftkdError(
            f"--out {display_path(out)}: inside the input folder {display_path(inputs)}; "
            "expected a folder outside it (inputs are never written)"
        )
    if o in i.parents:
        raise SftkdError(
            f"--out {display_path(out)}: contains the input {display_path(inputs)}; "
            "expected a separate folder"
        )


def _existing(out: Path) -> dict[str, Any] | None:
    """The manifest of the sftkd dataset at `out`; None when `out` is absent or an empty folder.

    A non-empty folder is only ever written when its manifest is sftkd's (a JSON object with the
    keys prepare-data writes, format FORMAT, listing plain file names): anything else is the
    user's folder and is refused, with or without --force.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    path = out / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise SftkdError(
            f"--out {display_path(out)}: exists and is not a sftkd dataset (no {MANIFEST}); "
            "expected a new or empty folder"
        )
    try:
        manifest = json.loads(read_regular_bytes(path, MANIFEST, MAX_JSON_BYTES))
    except (SftkdError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, SftkdError) else "not JSON"
        raise SftkdError(
            f"--out {display_path(out)}: not a sftkd dataset ({reason}); nothing there is changed, even with "
            "--force: expected a new or empty folder, or remove the folder yourself"
        ) from None
    problem = _foreign(manifest)
    if problem:
        raise SftkdError(
            f"--out {display_path(out)}: its {MANIFEST} is not one written by prepare-data ({problem}); "
            "nothing there is changed, even with --force: expected a new or empty folder"
        )
    return manifest


def _foreign(manifest: Any) -> str | None:
    """Why `manifest` is not one prepare-data wrote, or None when it is."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        return f"missing key {missing[0]!r}"
    if manifest["format"] != FORMAT:
        return f"format {manifest['format']!r}, expected {FORMAT}"
    volumes, mask = manifest["volumes"], manifest["mask"]
    if not (isinstance(volumes, dict) and isinstance(mask, dict) and isinstance(mask.get("files"), dict)):
        return "volumes or mask.files is not a mapping"
    for name in _listed_files(manifest):
        parts = Path(name).parts
        plain = isinstance(name, str) and ((len(parts) == 1 and name.endswith(".h5"))
                                           or (len(parts) == 2 and parts[0] == "masks" and name.endswith(".npy")))
        if not plain or ".." in parts:
            return f"lists {name!r}, expected <volume>.h5 or masks/<name>.npy"
    return None


def _listed_files(manifest: dict[str, Any]) -> list[str]:
    """The files a sftkd manifest lists (volume h5 files and mask files), relative to the dataset."""
    names = [v.get("file", "") if isinstance(v, dict) else "" for v in manifest.get("volumes", {}).values()]
    names += list(manifest.get("mask", {}).get("files", {}).values())
    return [str(n) for n in names]


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A short description of how the stored inputs differ from the requested ones."""
    old_opts, new_opts = old.get("options", {}), new["options"]
    changed = [
        f"{k} {json.dumps(old_opts.get(k))} -> {json.dumps(new_opts.get(k))}"
        for k in sorted(set(old_opts) | set(new_opts)) if old_opts.get(k) != new_opts.get(k)
    ]
    if changed:
        return "; ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
    old_src = old.get("inputs", {}).get("sources", {})
    new_src = new["inputs"]["sources"]
    files = sorted(k for k in set(old_src) | set(new_src) if old_src.get(k) != new_src.get(k))
    if files:
        return "source files changed: " + ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    return "mask files changed"


def _missing_files(out: Path, manifest: dict[str, Any]) -> list[str]:
    """Files the manifest lists that are not in `out`."""
    return [n for n in _listed_files(manifest) if not (out / n).is_file()]


def _check_collisions(out: Path, existing: dict[str, Any] | None, names: list[str]) -> None:
    """Refuse to write over a file in `out` that the old manifest does not list (the user's own)."""
    if not out.is_dir():
        return
    if (out / "masks").is_symlink() or ((out / "masks").exists() and not (out / "masks").is_dir()):
        raise SftkdError(f"--out {display_path(out)}: masks is there and is not a folder of the old dataset; "
                         "expected to replace only files prepare-data wrote: move it away or choose another --out")
    ours = set(_listed_files(existing or {})) | {MANIFEST}
    for name in names:
        if name not in ours and ((out / name).exists() or (out / name).is_symlink()):
            raise SftkdError(
                f"--out {display_path(out)}: {name} is there but not part of the old dataset; "
                "expected to replace only files prepare-data wrote: move it away or choose another --out"
            )


# --------------------------------------------------------------------------- reading


def _prepare_file(source: Source, file: SourceFile, options: PrepareOptions) -> _Prepared:
    """Read, validate and slice one source file (steps 1-5 of the module docstring)."""
    import nibabel as nib

    img = load_nifti(file.path)
    spatial_shape(img, file.path)  # 4-D and empty images fail here, before reading the data
    if source.reorient:
        try:
            img = nib.as_closest_canonical(img)
        except Exception as exc:
            raise SftkdError(f"{display_path(file.path)}: cannot reorient to RAS ({exc})") from exc
    data = read_volume(img, file.path)
    vmax = float(data.max())
    data = np.maximum(data, 0.0) / np.float32(vmax)
    axis = options.slice_axis % 3
    zooms = voxel_size(img)
    order = source.axes(axis)
    factor = options.downsample
    vox = (zooms[order[0]], zooms[order[1]] * factor, zooms[order[2]] * factor)
    stack = downsample(source.slices(data, axis), factor)
    kept = kept_slices(stack, options.min_slice_mean)
    stack = stack[kept]
    if options.size is not None:
        stack = crop_or_pad(stack, options.size)
        nonzero = np.flatnonzero(np.any(stack != 0, axis=(1, 2)))
        stack, kept = stack[nonzero], kept[nonzero]
    if len(kept) == 0:
        raise SftkdError(
            f"{display_path(file.path)}: no slices left after dropping empty slices "
            f"(--min-slice-mean {options.min_slice_mean:g}); expected some non-empty slices"
        )
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    return _Prepared(file, stack, kept, vmax, vox, (stack.shape[1], stack.shape[2]))


def _image_size(prepared: list[_Prepared], options: PrepareOptions) -> tuple[int, int]:
    """The dataset's (H, W): `options.size`, or the common native size of all volumes."""
    if options.size is not None:
        return int(options.size[0]), int(options.size[1])
    sizes = {p.shape for p in prepared}
    if len(sizes) > 1:
        examples = ", ".join(f"{p.file.rel} {p.shape[0]}x{p.shape[1]}" for p in prepared[:3])
        raise SftkdError(
            f"volumes have different in-plane sizes ({examples}, ...); expected one size: pass --size H W"
        )
    return prepared[0].shape


# --------------------------------------------------------------------------- masks


def _user_masks(options: PrepareOptions) -> dict[float, tuple[Path, np.ndarray, str]]:
    """Load the user's mask files (format and sampling checks now, shape checks once the size is known)."""
    out = {}
    for acc, path in options.mask_files.items():
        mask = load_mask(path)
        check_mask_acceleration(mask, acc, f"--mask-file {display_path(path)}")
        out[acc] = (Path(path), mask, sha256_file(Path(path)))
    return out


def _check_mask_shapes(user: dict[float, tuple[Path, np.ndarray, str]], size: tuple[int, int]) -> None:
    for path, mask, _ in user.values():
        if tuple(mask.shape) != tuple(size):
            raise SftkdError(
                f"{display_path(path)}: shape {tuple(mask.shape)}, expected {tuple(size)} to match the images"
            )


def _masks(
    options: PrepareOptions, size: tuple[int, int], user: dict[float, tuple[Path, np.ndarray, str]]
) -> dict[float, np.ndarray]:
    """One fixed mask per acceleration: the user's file, or a generated one (sr: the k-space box)."""
    out = {}
    for acc in options.accelerations:
        if options.task == "sr":
            out[acc] = sr_box_mask(size, acc, options.mask_layout)
        elif acc in user:
            out[acc] = user[acc][1]
        else:
            out[acc] = make_mask(
                options.mask_kind, size, acc, seed=options.seed,
                center_fraction=options.center_fraction, layout=options.mask_layout, axis=0,
            )
    return out


def _mask_record(
    options: PrepareOptions, masks: dict[float, np.ndarray], user: dict[float, tuple[Path, np.ndarray, str]]
) -> dict[str, Any]:
    """The manifest's `mask` section."""
    per_acc = {}
    for acc, mask in masks.items():
        key = group_key(options.task, acc)
        per_acc[key] = {
            "file": f"masks/{key}.npy",
            "lines": int(np.count_nonzero(mask.any(axis=1))),
            "sampled_fraction": round(float(mask.mean()), 6),
            "origin": "sr-box" if options.task == "sr" else "file" if acc in user else options.mask_kind,
        }
        if options.task == "sr":
            per_acc[key]["box"] = [int(np.count_nonzero(mask.any(axis=1))), int(np.count_nonzero(mask.any(axis=0)))]
        if acc in user:
            per_acc[key]["source_file"] = str(user[acc][0].resolve())
            per_acc[key]["source_sha256"] = user[acc][2]
    return {
        "kind": "sr-box" if options.task == "sr" else options.mask_kind,
        "seed": options.seed,
        "layout": options.mask_layout,
        "axis": 0,
        "center_fraction": options.center_fraction,
        "files": {k: v["file"] for k, v in per_acc.items()},
        "per_acceleration": per_acc,
    }


# --------------------------------------------------------------------------- writing


def write_volume_h5(
    path: Path, images: np.ndarray, source_slices: np.ndarray, masks: dict[float, np.ndarray],
    centered: bool, attrs: dict[str, Any], task: str = "recon",
) -> None:
    """Write one volume's h5 file: image, source_slice, and per acceleration (sr: scale) kspace/zf/mask.

    The file is built in memory and written with plain writes (see `h5_image`): a full disk or a
    file-size limit raises OSError here, never an h5py error.
    """
    s, h, w = images.shape
    chunks = (1, h, w)

    def build(f: h5py.File) -> None:
        f.create_dataset("image", data=images.astype(np.float32), chunks=chunks)
        f.create_dataset("source_slice", data=source_slices.astype(np.int32))
        for acc, mask in masks.items():
            kspace, zf = undersample(images, mask, centered=centered)
            group = f.create_group(group_key(task, acc))
            group.create_dataset("kspace", data=kspace, chunks=chunks, compression="lzf")
            group.create_dataset("zf", data=zf, chunks=chunks)
            group.create_dataset("mask", data=mask.astype(np.float32))
            group.attrs["scale" if task == "sr" else "acceleration"] = float(acc)
        for key, value in attrs.items():
            f.attrs[key] = value

    write_bytes_synced(path, h5_image(build))


def _created_parents(out: Path) -> list[Path]:
    """Ancestors of `out` that do not exist yet (to remove again if writing fails)."""
    missing = []
    for parent in out.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _install(tmp: Path, out: Path, old: dict[str, Any] | None) -> None:
    """Move the finished dataset in `tmp` to `out`.

    A new `out` is one rename. Into an existing folder (empty, or the old dataset) the files are
    moved one by one: the old manifest goes first (so a crash midway never leaves a manifest
    describing other data), then the new files replace the old ones, the old dataset's files that
    the new one lacks are removed, and the new manifest comes last. Files the old manifest does
    not list are never touched.
    """
    if not out.exists():
        tmp.rename(out)
        return
    new = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    for name in new:
        os.replace(tmp / name, out / name)
    for name in set(_listed_files(old or {})) - set(new):
        (out / name).unlink(missing_ok=True)
    os.replace(tmp / MANIFEST, out / MANIFEST)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (out / "masks").rmdir()  # only when empty (a recon -> sr change cannot empty it, but be exact)
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def _remove_stale(out: Path) -> list[Path]:
    """Remove `.<name>.tmp-<pid>` / `.<name>.old-<pid>` folders beside `out` whose process is dead
    (left by a kill -9 or a power cut); returns what was removed. Called with the lock held."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)$")
    for item in out.parent.iterdir() if out.parent.is_dir() else ():
        match = pattern.match(item.name)
        if match and item.is_dir() and not item.is_symlink() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
    return removed


class PrepareInterrupted(SftkdError):
    """prepare-data stopped by Ctrl-C (exit 130) or SIGTERM (exit 143) with nothing written."""


class _Signals:
    """While active, SIGINT and SIGTERM only set a flag, which `check()` turns into
    PrepareInterrupted at safe points (between files), so no write is cut in half and the
    temporary folder is always cleaned. A second signal interrupts at once (KeyboardInterrupt)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)  # None: set outside Python

    def error(self, signum: int | None = None) -> PrepareInterrupted:
        signum = signum or self.received or signal.SIGINT
        name = signal.Signals(signum).name
        error = PrepareInterrupted(f"prepare-data stopped by {name}; nothing written, "
                                   f"{display_path(self.out)} is as it was")
        error.exit_code = 128 + int(signum)
        return error

    def check(self) -> None:
        if self.received is not None:
            raise self.error()


def _write(
    tmp: Path, source: Source, options: PrepareOptions, prepared: list[_Prepared],
    pieces: list[Piece], splits: dict[str, str], masks: dict[float, np.ndarray],
    progress: Progress | None, check: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """Write all h5 files and masks into `tmp`; returns the manifest's `volumes` entries.

    `check()` runs before each file (it raises when prepare-data was asked to stop)."""
    (tmp / "masks").mkdir(parents=True)
    for acc, mask in masks.items():
        buffer = io.BytesIO()
        np.save(buffer, mask.astype(np.float32))
        write_bytes_synced(tmp / "masks" / f"{group_key(options.task, acc)}.npy", buffer.getvalue())
    by_rel = {p.file.rel: p for p in prepared}
    volumes: dict[str, dict[str, Any]] = {}
    centered = options.mask_layout == "centered"
    reread: tuple[str, np.ndarray] | None = None  # last file read again (stack not kept in memory)
    for n, piece in enumerate(pieces):
        check()
        prep = by_rel[piece.file.rel]
        stack = prep.stack
        if stack is None:
            if reread is None or reread[0] != piece.file.rel:
                again = _prepare_file(source, piece.file, options).stack
                assert again is not None
                reread = (piece.file.rel, again)
            stack = reread[1]
        rows = np.asarray(piece.rows, dtype=int)
        images = stack[rows]  # type: ignore[index]
        source_slices = prep.kept[rows]
        split = splits[piece.volume]
        attrs = {
            "format": FORMAT,
            "source": source.label,
            "volume": piece.volume,
            "source_file": piece.file.rel,
            "voxel_size": np.asarray(prep.voxel_size, dtype=np.float64),
            "normalisation": NORMALISATION,
            "max": prep.max,
            "split": split,
            "slice_axis": options.slice_axis % 3,
            "sftkd_version": __version__,
        }
        write_volume_h5(tmp / f"{piece.volume}.h5", images, source_slices, masks, centered, attrs, options.task)
        volumes[piece.volume] = {
            "file": f"{piece.volume}.h5",
            "slices": int(len(rows)),
            "split": split,
            "source_file": piece.file.rel,
            "source_sha256": None,  # filled by the caller
            "source_slices": [int(source_slices[0]), int(source_slices[-1])],
            "max": prep.max,
            "voxel_size": [float(v) for v in prep.voxel_size],
        }
        if progress:
            progress("write", n + 1, len(pieces))
    return volumes


# --------------------------------------------------------------------------- the library entry point


def prepare_dataset(
    source: Source, out: str | Path, options: PrepareOptions | None = None,
    progress: Progress | None = None,
) -> PrepareResult:
    """Prepare `source` into the dataset folder `out` (see the module docstring).

    `progress(stage, done, total)` is called with stage 'hash', 'read' and 'write'.
    Raises SftkdError for any user error, with nothing written; PrepareInterrupted on Ctrl-C or
    SIGTERM, after removing the temporary folder.
    """
    from filelock import FileLock, Timeout

    start = time.perf_counter()
    options = options or PrepareOptions()
    options.validate()
    out = Path(os.path.abspath(out))
    _check_out(out, source)
    check_writable(out, "--out", extra=16)  # beside it: .<name>.tmp-<pid> and .<name>.lock
    if out.exists():
        check_writable(out.parent, "--out")  # the temporary folder and the lock go beside it
    created = _created_parents(out)
    lock_path = out.parent / f".{out.name}.lock"
    lock = FileLock(str(lock_path), timeout=0)
    locked = False
    try:
        with _Signals(out) as signals:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    lock.acquire()
                except Timeout:
                    raise SftkdError(f"--out {display_path(out)}: another prepare-data is writing this folder "
                                     f"(lock {display_path(lock_path)}); wait for it to finish") from None
                locked = True
                _remove_stale(out)
                return _prepare_locked(source, out, options, progress, signals, start)
            except KeyboardInterrupt:
                raise signals.error(signal.SIGINT) from None
    except OSError as exc:
        raise SftkdError(f"--out {display_path(out)}: cannot write ({os_error_text(exc)})") from None
    finally:
        if locked:
            if not out.exists():
                lock_path.unlink(missing_ok=True)  # a failed first preparation leaves nothing behind
            lock.release()
        if not out.exists():
            for parent in created:
                try:
                    parent.rmdir()
                except OSError:
                    break


def _prepare_locked(
    source: Source, out: Path, options: PrepareOptions, progress: Progress | None, signals: _Signals,
    start: float,
) -> PrepareResult:
    """`prepare_dataset` once the output's lock is held."""
    existing = _existing(out)
    user = _user_masks(options)
    if options.size is not None:
        _check_mask_shapes(user, options.size)
    files = source.files()
    # check the split options now (on whole files) rather than after reading every volume
    source.split_pieces([Piece(f.volume, f, (), f.split) for f in files], options.split_request())

    checksums = {}
    for n, file in enumerate(files):
        signals.check()
        checksums[file.rel] = sha256_file(file.path)
        if progress:
            progress("hash", n + 1, len(files))
    record = {
        "options": {"source": source.name, **source.options(), **options.record()},
        "inputs": {
            "sources": checksums,
            "mask_files": {acceleration_key(a): u[2] for a, u in sorted(user.items())},
        },
    }
    if existing is not None:
        same = existing.get("options") == record["options"] and existing.get("inputs") == record["inputs"]
        missing = _missing_files(out, existing) if same else []
        if same and not missing and not options.force:
            return PrepareResult(out, existing, True, time.perf_counter() - start)
        if not options.force:
            why = f"incomplete (missing {missing[0]})" if same else f"prepared differently: {_difference(existing, record)}"
            raise SftkdError(f"--out {display_path(out)}: existing dataset {why}; pass --force to rebuild it")

    prepared: list[_Prepared] = []
    in_memory = 0
    for n, file in enumerate(files):
        signals.check()
        prep = _prepare_file(source, file, options)
        in_memory += prep.stack.nbytes  # type: ignore[union-attr]
        if in_memory > KEEP_IN_MEMORY_BYTES:
            prep.stack = None
        prepared.append(prep)
        if progress:
            progress("read", n + 1, len(files))
    size = _image_size(prepared, options)
    _check_mask_shapes(user, size)
    masks = _masks(options, size, user)

    pieces = [piece for prep in prepared for piece in source.pieces(prep.file, prep.kept)]
    seen: dict[str, str] = {}
    for piece in pieces:
        if piece.volume in seen:
            raise SftkdError(
                f"{piece.file.rel}: volume id {piece.volume!r} also used by {seen[piece.volume]}; "
                "expected unique volume ids"
            )
        seen[piece.volume] = piece.file.rel
    splits = source.split_pieces(pieces, options.split_request())
    _check_collisions(out, existing, [f"{v}.h5" for v in seen]
                      + [f"masks/{group_key(options.task, a)}.npy" for a in masks])

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        volumes = _write(tmp, source, options, prepared, pieces, splits, masks, progress, signals.check)
        for entry in volumes.values():
            entry["source_sha256"] = checksums[entry["source_file"]]
        manifest = _manifest(source, options, size, masks, user, splits, volumes, record)
        write_bytes_synced(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        signals.check()  # the last moment to stop: installing is a few renames, never cut short
        _install(tmp, out, existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out, manifest, False, time.perf_counter() - start)


def _manifest(
    source: Source, options: PrepareOptions, size: tuple[int, int], masks: dict[float, np.ndarray],
    user: dict[float, tuple[Path, np.ndarray, str]], splits: dict[str, str],
    volumes: dict[str, dict[str, Any]], record: dict[str, Any],
) -> dict[str, Any]:
    """The dataset's manifest.json content (deterministic: no timestamps)."""
    split_lists = {name: [v for v in volumes if splits[v] == name] for name in SPLITS}
    return {
        "format": FORMAT,
        "sftkd_version": __version__,
        "source": source.label,
        "source_root": None if source.root is None else str(source.root.resolve()),
        "source_details": source.details(),
        "image_size": [int(size[0]), int(size[1])],
        "task": options.task,
        "accelerations": [float(a) for a in options.accelerations],
        **({"scales": [float(a) for a in options.accelerations]} if options.task == "sr" else {}),
        "normalisation": NORMALISATION,
        "mask": _mask_record(options, masks, user),
        "splits": split_lists,
        "slices": {name: sum(volumes[v]["slices"] for v in ids) for name, ids in split_lists.items()},
        "volumes": volumes,
        "options": record["options"],
        "inputs": record["inputs"],
    }
