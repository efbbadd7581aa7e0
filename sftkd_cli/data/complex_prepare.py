"""Preparing a complex (raw k-space) source, e.g. fastMRI single-coil: the `prepare-data` writer
for sources whose `values` is "complex" (`data.prepare.prepare_dataset` hands them here).

Output, beside the usual manifest.json and masks/acc{a:g}.npy, one `<volume>.h5` per input file:
- `kspace` complex64 (S, H, W): the fully sampled, centred k-space, divided by the volume's max;
- `target_mag` float32 (S, h, w): fastMRI's magnitude target (`reconstruction_esc`) / the same max;
- `source_slice` int32 (S,); one group `acc{a:g}` per acceleration with the fixed `mask` (H, W);
- attrs: max, scale (= 1 / max), values "complex", the file's fastMRI acquisition, ...
No undersampled k-space or zero-filled image is stored: `SliceDataset` applies the mask when it
reads a slice (so a new mask per slice and epoch needs nothing more on disk).

Normalisation: one factor per volume, 1 / max with max the file's attr `max` (fastMRI's: the max of
`reconstruction_esc` over the volume; computed from it when the attr is missing). k-space, complex
images and `target_mag` are all divided by it, so |ifft2c(kspace)| centre-cropped to (h, w) equals
`target_mag` (to float error), magnitudes are about [0, 1] as in the paper's data, and fastMRI's
metrics (NMSE, PSNR and SSIM with the volume's max) are unchanged by the factor. Raw values are
kspace x max.

Images are fastMRI's `ifft2c` (ifftshift -> orthonormal ifft2 -> fftshift). Without `--size` every
file must share one k-space size, at least the target size (fastMRI's target of a narrow image is
wider than its k-space: such files need `--size`, which zero-pads them). With `--size H W` each
complex image is centre-cropped / zero-padded to H x W in the image domain (anchored so that the
(h, w) target crop stays aligned) and its k-space recomputed with fft2c: the k-space of such files
is then no longer the raw one (the manifest's volumes[...]["kspace"] says "raw" or "resized").

Resuming (see `data.partial`): a run interrupted while writing keeps the volume files it wrote;
the same command again writes only the others, reading none of the finished volumes' inputs
(their headers are checked again, and their sha256 taken unless recorded as unchanged). A slice
holding NaN or Inf is found only as it is written: the error then says where the files already
written are kept (`data.partial.kept_note`).

Memory: the header of every file is checked first; then one file at a time is read, a slice at a
time, and one output volume is built in memory (~2x its size) and written; nothing else is held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sftkd_cli import __version__
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.data.format import FORMAT, MASKS, acceleration_key
from sftkd_cli.data.manifest import (
    InputHashes, UserMasks, dataset_manifest, generated_mask, inputs_record, mask_record, user_masks,
    write_masks,
)
from sftkd_cli.data.option_names import OptionError
from sftkd_cli.data.options import PrepareOptions
from sftkd_cli.data.output import check_collisions, up_to_date
from sftkd_cli.data.partial import start_partial
from sftkd_cli.data.sources.base import Piece, SourceFile
from sftkd_cli.errors import SftkdError, sizes_listed
from sftkd_cli.files import display_path, h5_image, write_bytes_synced
from sftkd_cli.h5_data import h5_array
from sftkd_cli.mri.fft import fft2_np, ifft2_np
from sftkd_cli.mri.masks import expand_line_mask

#: how complex data is scaled (h5 attribute and manifest "normalisation")
COMPLEX_NORMALISATION = ("k-space and images / max (one factor per volume: the file's attr max, the max of "
                         "its magnitude target reconstruction_esc); no clipping")
#: fastMRI's single-coil magnitude target
TARGET_NAME = "reconstruction_esc"
#: the mask axis of complex sources: fastMRI samples k-space columns (the width)
MASK_AXIS = 1

Progress = Callable[[str, int, int], None]


def _window(x: np.ndarray, size: tuple[int, int], anchor: tuple[int, int]) -> np.ndarray:
    """Centre crop / zero-pad the last two axes of `x` to `size`, placed so that the centre
    `anchor`-sized crop of the result is the centre `anchor`-sized crop of `x` (fastMRI's crop)."""
    out = np.zeros((*x.shape[:-2], *size), dtype=x.dtype)
    src, dst = [], []
    for n, t, a in zip(x.shape[-2:], size, anchor):
        start = (n - a) // 2 - (t - a) // 2  # index in x of the result's first row/column
        lo, hi = max(start, 0), min(start + t, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(..., *dst)] = x[(..., *src)]
    return out


def _masks(options: PrepareOptions, size: tuple[int, int], user: UserMasks) -> dict[float, np.ndarray]:
    """One fixed (H, W) mask per acceleration: the user's (a vector broadcast over the rows) or a
    generated column mask (fastMRI's own kinds give fastMRI's mask for --seed)."""
    out = {}
    for acc in options.accelerations:
        if acc in user:
            out[acc] = expand_line_mask(user[acc][1], size, f"--mask-file {display_path(user[acc][0])}")
        else:
            out[acc] = generated_mask(options, size, acc, "centered", MASK_AXIS)
    return out


def _image_size(source: Any, files: list[SourceFile], options: PrepareOptions) -> tuple[tuple[int, int], tuple[int, int]]:
    """The dataset's k-space size (H, W) and target size (h, w); one of each, or --size. Without
    --size, k-space smaller than the target is refused (its reconstructions could not be centre-
    cropped to the target when evaluated); --size zero-pads such images in the image domain."""
    targets = {source.info[f.rel].target_shape for f in files}
    if len(targets) > 1:
        raise SftkdError(f"{TARGET_NAME} sizes differ ({', '.join(f'{h}x{w}' for h, w in sorted(targets))}); "
                         "expected one target size for all files")
    target = targets.pop()
    if options.size is not None:
        size = (int(options.size[0]), int(options.size[1]))
        if size[0] < target[0] or size[1] < target[1]:
            raise SftkdError(f"--size {size[0]} {size[1]}: smaller than the {target[0]} x {target[1]} target images; "
                             "expected at least the target size")
        return size, target
    for f in files:
        h, w = source.info[f.rel].shape
        if h < target[0] or w < target[1]:  # fastMRI zero-pads such narrow images before its centre crop
            raise SftkdError(f"{display_path(f.path)}: kspace {h}x{w} is smaller than its {target[0]}x{target[1]} "
                             f"{TARGET_NAME}; expected k-space at least the target size: pass --size "
                             f"{max(h, target[0])} {max(w, target[1])} (images are zero-padded to it)")
    sizes = {tuple(source.info[f.rel].shape) for f in files}
    if len(sizes) > 1:
        listed, common = sizes_listed((f.rel, source.info[f.rel].shape) for f in files)
        raise SftkdError(f"k-space sizes differ: {listed}; expected one size: pass --size {common[0]} {common[1]} "
                         "(images are cropped / padded to it and their k-space recomputed)")
    return sizes.pop(), target  # type: ignore[return-value]


def _write_volume(path: Path, file: SourceFile, rows: np.ndarray, size: tuple[int, int],
                  target_shape: tuple[int, int], vmax: float, masks: dict[float, np.ndarray],
                  attrs: dict[str, Any]) -> tuple[float, bool]:
    """Write one complex volume's h5 file from one input file, read a slice at a time (the output is
    built in memory and written with plain writes); returns (max, whether k-space was resized)."""
    where = display_path(file.path)
    resized = False

    def build(out: h5py.File) -> None:
        nonlocal vmax, resized
        with h5py.File(file.path, "r") as f:
            kdata, tdata = h5_array(f, "kspace", where), h5_array(f, TARGET_NAME, where)
            if vmax <= 0:  # no attr max: fastMRI's definition, the max of the target over the volume
                vmax = float(max(np.max(tdata[s]) for s in range(tdata.shape[0])))
                if not (np.isfinite(vmax) and vmax > 0):
                    raise SftkdError(f"{where}: {TARGET_NAME} has no positive value; expected a magnitude image")
            resized = tuple(kdata.shape[1:]) != size
            kspace = out.create_dataset("kspace", shape=(len(rows), *size), dtype=np.complex64, chunks=(1, *size))
            target = out.create_dataset("target_mag", shape=(len(rows), *target_shape), dtype=np.float32,
                                        chunks=(1, *target_shape))
            for i, s in enumerate(rows):
                k = np.asarray(kdata[int(s)]).astype(np.complex128)
                t = np.asarray(tdata[int(s)], dtype=np.float64)
                if not (np.all(np.isfinite(k)) and np.all(np.isfinite(t))):
                    raise SftkdError(f"{where}: slice {int(s)} holds NaN or Inf; expected finite k-space and target")
                if resized:
                    k = fft2_np(_window(ifft2_np(k, centered=True), size, target_shape), centered=True)
                kspace[i] = (k / vmax).astype(np.complex64)
                target[i] = (t / vmax).astype(np.float32)
        out.create_dataset("source_slice", data=rows.astype(np.int32))
        for acc, mask in masks.items():
            group = out.create_group(acceleration_key(acc))
            group.create_dataset("mask", data=mask.astype(np.float32))
            group.attrs["acceleration"] = float(acc)
        for key, value in {**attrs, "max": vmax, "scale": 1.0 / vmax}.items():
            out.attrs[key] = value

    try:
        image = h5_image(build)
    except SftkdError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise SftkdError(f"{where}: cannot read ({exc}); is the file truncated?") from None
    write_bytes_synced(path, image)
    return vmax, resized


def _check_named_kept(listed: list[SourceFile], kept: list[SourceFile], options: PrepareOptions, sampling: str) -> None:
    """Refuse a --val/--test id naming a listed file that `sampling` (the seeded sample option, as
    '--sample-rate 0.1') dropped, saying so: the split would otherwise call it 'not found'."""
    dropped = {f.group for f in listed} - {f.group for f in kept}
    for key, ids in (("val", options.val), ("test", options.test)):
        for gid in ids:
            if gid in dropped:
                raise OptionError(key, gid, f"{sampling} left it no slices; raise it, or name another file")


def prepare_complex(source: Any, out: Path, options: PrepareOptions, existing: dict[str, Any] | None,
                    progress: Progress | None, check: Callable[[], None],
                    before_writing: Callable[[], None] = lambda: None,
                    say: Callable[[str], None] | None = None) -> tuple[dict[str, Any], bool]:
    """Prepare a complex source into `out` (lock held, `existing` its old manifest or None);
    returns (manifest, unchanged). `check()` raises when prepare-data was asked to stop;
    `before_writing()` is called when the dataset is not up to date, before anything is written;
    `say(line)` tells the source's `note()` and that an interrupted run is resumed or discarded
    (`data.partial`)."""
    if options.task != "recon":  # the CLI and plans refuse --task first (the source decides it): library callers
        raise SftkdError(f"--task {options.task}: source {source.name} holds raw k-space; expected --task recon")
    user = user_masks(options, line=True, source_layout="centered")
    listed = source.files()
    if say and (note := source.note()):  # as data.prepare says a magnitude source's note
        say(note)
    files = source.sample_volumes(listed, options.seed)
    _check_named_kept(listed, files, options, f"--volume-sample-rate {source.volume_sample_rate:g}")
    source.split_pieces([Piece(f.volume, f, (), f.split) for f in files], options.split_request())
    hashes = InputHashes(out, trust=not options.force)
    record = inputs_record(source, options, files, user, hashes, check, progress)
    if up_to_date(out, existing, record, options.force):
        hashes.save()
        return existing, True  # type: ignore[return-value]
    before_writing()
    size, target_shape = _image_size(source, files, options)
    masks = _masks(options, size, user)
    rows = source.slice_rows(files, options.seed)
    sampled = [f for f in files if len(rows[f.rel])]
    _check_named_kept(files, sampled, options, f"--sample-rate {source.sample_rate:g}")
    files = sampled
    pieces = [Piece(f.volume, f, tuple(range(len(rows[f.rel]))), f.split) for f in files]
    splits = source.split_pieces(pieces, options.split_request())
    check_collisions(out, existing, [f"{f.volume}.h5" for f in files] + [f"{MASKS}/{acceleration_key(a)}.npy" for a in masks])
    partial = start_partial(out, record, hashes, say)
    write_masks(partial.folder, masks, options.task)

    def write(n: int) -> dict[str, Any]:
        file = files[n]
        info = source.info[file.rel]
        kept = rows[file.rel]
        split = splits[file.volume]
        attrs = {"format": FORMAT, "source": source.label, "volume": file.volume, "source_file": file.rel,
                 "values": "complex", "normalisation": COMPLEX_NORMALISATION, "split": split,
                 "acquisition": info.acquisition, "sftkd_version": __version__}
        vmax, resized = _write_volume(partial.folder / f"{file.volume}.h5", file, kept, size, target_shape, info.max,
                                      masks, attrs)
        return {
            "file": f"{file.volume}.h5", "slices": int(len(kept)), "split": split, "source_file": file.rel,
            "source_sha256": record["inputs"]["sources"][file.rel], "source_slices": [int(kept[0]), int(kept[-1])],
            "max": vmax, "scale": 1.0 / vmax, "acquisition": info.acquisition, "kspace": "resized" if resized else "raw",
        }

    volumes = partial.write_volumes([f.volume for f in files], write, check, progress)
    acquisitions = dict(Counter(entry["acquisition"] for entry in volumes.values()))
    acquisition = Acquisition(task="recon", kspace_layout="centered", values="complex", channels=2,
                              image_size=(int(size[0]), int(size[1])))
    manifest = dataset_manifest(
        source, options, acquisition, COMPLEX_NORMALISATION, mask_record(options, masks, user, "centered", MASK_AXIS),
        splits, volumes, record, details={"acquisitions": acquisitions},
        after_size={"target_size": [int(target_shape[0]), int(target_shape[1])]}, after_task={"values": "complex"},
    )
    check()  # the last moment to stop: installing is a few renames, never cut short
    partial.install(out, existing, manifest)
    return manifest, False
