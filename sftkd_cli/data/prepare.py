"""Turn raw volumes from a `Source` into a prepared dataset directory (the `prepare-data` library).

Output (see COMMON conventions): one `<volume>.h5` per output volume with `image` (S,H,W) float32
in [0, 1], `source_slice` (S,) int32 (slice index in the source file, after the demo's
reorientation to RAS) and one group `acc{a:g}` per acceleration with `kspace` (masked,
complex64), `zf` (float32) and `mask`; `masks/acc{a:g}.npy`; and `manifest.json`. Attributes of
each file say where its pixels come from: `source_file`, `max` (the divisor), `voxel_size`
(mm, in the order slice, row, column) and `affine`, the 4x4 matrix taking (source slice, row,
column, 1) to the input's scanner coordinates in mm (`prepared_affine`: slicing, downsampling and
crop/pad folded in), so a reconstruction can be laid over its input.

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

Safety: every NIfTI input is validated before anything is written (a complex source, fastMRI,
has its headers checked first but its slices checked for NaN/Inf as they are written,
`data.complex_prepare`); the dataset is written to the sibling folder `.<name>.partial`
(`data.partial`; h5 files are built in memory and written with plain file writes, so a full disk
is one clear error) and moved into place at the end, so the dataset folder only ever holds a
finished dataset. A failure, Ctrl-C or SIGTERM (exit 130 / 143) or a kill keeps the partial
folder, and the error of a failure while writing says so when it holds finished files (a
half-written file is removed on a full disk): re-running the same command (same options, same inputs)
resumes, keeping the volume files already written whole and writing the others; the result is
the one an uninterrupted run writes. A resumed run still hashes the inputs (unless recorded, as
below) and reads every input again to validate it and find the volumes; it skips building and
writing the finished ones. A run with other options or changed inputs removes the partial
folder's files and starts over, saying so in one line (a folder there that is not prepare-data's
is refused, untouched). One process at a time prepares a folder (an
exclusive lock on the sibling file `.<name>.lock`); `.<name>.tmp-<pid>` folders of dead
processes (earlier versions) are removed. Re-running with the same options and unchanged inputs (sha256) is a
no-op (a folder that cannot be written is then checked without the lock and used as it is), which
reads no input whose size and modification time are those recorded in the sibling file
`.<name>.hashes.json` (`data.manifest.InputHashes`); different options on an existing
dataset need `force`, which replaces only the files the old manifest lists: other files in the
folder are kept. A non-empty folder whose manifest is not sftkd's is never written. Input folders
are never written. (The output folder's checks, the install and the signal handling live in
`sftkd_cli.data.output`; the options in `sftkd_cli.data.options`; the format's names and keys in
`sftkd_cli.data.format`.)

The manifest also records the acquisition (`sftkd_cli.acquisition.Acquisition.record()`: task,
k-space layout, magnitude values, one channel, image size) that models trained on it must fit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sftkd_cli import __version__
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.data.format import FORMAT, MASKS, NORMALISATION, group_key
from sftkd_cli.data.manifest import (
    InputHashes, UserMasks, dataset_manifest, generated_mask, inputs_record, mask_record, user_masks,
    write_masks,
)
from sftkd_cli.data.options import OptionNames, PrepareOptions
from sftkd_cli.data.output import (
    Signals, check_collisions, check_out, created_parents, existing_dataset, finish_interrupted_install,
    partial_folder, remove_stale, up_to_date,
)
from sftkd_cli.data.partial import Partial, kept_note, start_partial
from sftkd_cli.data.sources.base import Piece, Source, SourceFile
from sftkd_cli.data.volumes import (
    check_slices, crop_or_pad, crop_pad_offset, downsample, kept_slices, load_nifti, read_volume,
    spatial_shape, voxel_size,
)
from sftkd_cli.errors import SftkdError, counted, os_error_text, sizes_listed
from sftkd_cli.files import check_writable, display_path, h5_image, write_bytes_synced
from sftkd_cli.memory import available_bytes
from sftkd_cli.mri.masks import undersample


# Prepared stacks are kept in memory between validation and writing up to this many bytes, and
# up to KEEP_MEMORY_SHARE of the memory available when reading starts; beyond it they are read
# again when written. A quarter leaves the rest to the volume being read and its k-space per
# acceleration, and to other programs: reading a file again costs seconds, running out of memory the run.
KEEP_IN_MEMORY_BYTES = 2 << 30
KEEP_MEMORY_SHARE = 0.25


def keep_in_memory_limit() -> int:
    """The bytes of prepared stacks kept in memory: KEEP_IN_MEMORY_BYTES, or less on a machine
    with little memory available (`memory.available_bytes`)."""
    available = available_bytes()
    return KEEP_IN_MEMORY_BYTES if available is None else min(KEEP_IN_MEMORY_BYTES, int(available * KEEP_MEMORY_SHARE))

Progress = Callable[[str, int, int], None]
Say = Callable[[str], None]


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
class PrepareResult:
    """What `prepare_dataset` did: the dataset folder, its manifest, whether it was up to date, and
    the (H, W) of each input's slices that downsampling left smaller than the size they were then
    zero-padded to (`padding_warning`)."""

    out: Path
    manifest: dict[str, Any]
    unchanged: bool
    seconds: float
    padded: tuple[tuple[int, int], ...] = ()

    def padding_warning(self, name: OptionNames = OptionNames()) -> str:
        """One line saying how small downsampling left the slices and the size they are zero-padded
        to ('--downsample 50: the slices are 4x3 after downsampling, zero-padded to 32x32 (--size 32
        32)'), the options named as `name` does; '' when no slice was."""
        if not self.padded:
            return ""
        options = self.manifest["options"]
        height, width = options["size"]
        h, w = min(self.padded, key=lambda plane: plane[0] * plane[1])
        what = (f"the slices are {h}x{w}" if len(self.padded) == 1
                else f"the slices of {counted(len(self.padded), 'input')} are down to {h}x{w}")
        size = f"[{height}, {width}]" if name.prefix else f"{height} {width}"
        return (f"{name('downsample', str(options['downsample']))}: {what} after downsampling, zero-padded to "
                f"{height}x{width} ({name.ref('size', size)})")

    def moved_root_note(self, root: Path | None) -> str:
        """A note for an up-to-date dataset whose inputs are now at `root` (ROOT moved or renamed:
        the same files, told by their checksums), not where the manifest records them; '' else."""
        recorded = self.manifest.get("source_root")
        if not self.unchanged or root is None or not recorded or Path(recorded) == root.resolve():
            return ""
        return f"note: the dataset records its inputs at {recorded}, where it was prepared; the same files are now at {root}"

    def no_val_warning(self) -> str:
        """A warning for a dataset without a val split (training validates every epoch); '' else."""
        if self.manifest["splits"].get("val"):
            return ""
        return (f"{display_path(self.out)} has no val volume: training validates every epoch and refuses it "
                "(evaluate and export work); give --val ID or a larger share of volumes")


@dataclass
class _Prepared:
    """One validated source file: its prepared stack (or None when not kept in memory)."""

    file: SourceFile
    stack: np.ndarray | None
    kept: np.ndarray
    max: float
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int]
    affine: np.ndarray  # (source slice, row, column, 1) -> scanner mm, see `prepared_affine`
    plane: tuple[int, int]  # (H, W) after downsampling, before the crop / zero-pad to the size


# --------------------------------------------------------------------------- reading


def prepared_affine(affine: np.ndarray, index_map: np.ndarray, factor: int, plane: tuple[int, int],
                    size: tuple[int, int] | None) -> np.ndarray:
    """4x4 matrix taking (source slice, row, column, 1) of a prepared image to the scanner
    coordinates (mm, RAS+ as nibabel reads them) of the input voxel centre it shows.

    `affine`: the input's (after any reorientation); `index_map`: `Source.slice_index_map`;
    `factor`: the block-mean downsampling (block b's centre is input index factor*b + (factor-1)/2);
    `plane`: the downsampled (H, W) before `size`'s centre crop / zero-pad (`crop_pad_offset`)."""
    grid = np.eye(4)
    for axis, n in enumerate(plane, start=1):
        offset = crop_pad_offset(n, size[axis - 1]) if size is not None else 0
        grid[axis, axis] = factor
        grid[axis, 3] = factor * offset + (factor - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ index_map @ grid


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
    if options.size is None:
        check_slices(stack, file.path, data.shape, axis, factor)
    plane = (int(stack.shape[1]), int(stack.shape[2]))
    affine = prepared_affine(img.affine, source.slice_index_map(axis, data.shape), factor, plane, options.size)
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
    return _Prepared(file, stack, kept, vmax, vox, (stack.shape[1], stack.shape[2]), affine, plane)


def _padded_by_downsampling(prepared: list[_Prepared], options: PrepareOptions) -> tuple[tuple[int, int], ...]:
    """The downsampled (H, W) of each input whose slices are smaller than `options.size` in either
    dimension (so zero-padded to it) after downsampling; () without downsampling, where padding a
    smaller native slice is what --size is for (e.g. ACDC's varied slices to 150 x 150)."""
    if options.downsample == 1 or options.size is None:
        return ()
    height, width = options.size
    return tuple(p.plane for p in prepared if p.plane[0] < height or p.plane[1] < width)


def _image_size(prepared: list[_Prepared], options: PrepareOptions) -> tuple[int, int]:
    """The dataset's (H, W): `options.size`, or the common native size of all volumes."""
    if options.size is not None:
        return int(options.size[0]), int(options.size[1])
    _check_one_size([(p.file.rel, p.shape) for p in prepared])
    return prepared[0].shape


def _check_one_size(named: list[tuple[str, tuple[int, int]]]) -> None:
    """Refuse files of different in-plane sizes (without --size), one file named per size."""
    if len({size for _, size in named}) > 1:
        listed, common = sizes_listed(named)
        raise SftkdError(f"volumes have different in-plane sizes: {listed}; expected one size: pass --size H W "
                         f"(e.g. --size {common[0]} {common[1]}: slices are centre-cropped / zero-padded to it)")


def _check_header_sizes(source: Source, files: list[SourceFile], options: PrepareOptions) -> None:
    """Without --size, refuse inputs of different in-plane sizes from their headers (nibabel reads
    no voxel for them), before any file's data is read; `_image_size` checks again what was read.
    A reoriented source (the demo's one template) or a downsampling factor too large for a file is
    left to the reading, which says so."""
    if options.size is not None or source.reorient:
        return
    named = []
    for file in files:
        shape = spatial_shape(load_nifti(file.path), file.path)
        _, h, w = source.slices(np.broadcast_to(np.float32(0), shape), options.slice_axis % 3).shape  # no memory
        if h < options.downsample or w < options.downsample:
            return
        named.append((file.rel, (h // options.downsample, w // options.downsample)))
    _check_one_size(named)


# --------------------------------------------------------------------------- masks


def _check_mask_shapes(user: UserMasks, size: tuple[int, int]) -> None:
    for path, mask, _ in user.values():
        if tuple(mask.shape) != tuple(size):
            raise SftkdError(
                f"{display_path(path)}: shape {tuple(mask.shape)}, expected {tuple(size)} to match the images"
            )


def _masks(
    options: PrepareOptions, size: tuple[int, int], user: UserMasks
) -> dict[float, np.ndarray]:
    """One fixed mask per acceleration: the user's file, or a generated one (sr: the k-space box)."""
    out = {}
    for acc in options.accelerations:
        if options.task == "sr":
            out[acc] = sr_box_mask(size, acc, options.mask_layout)
        elif acc in user:
            out[acc] = user[acc][1]
        else:
            out[acc] = generated_mask(options, size, acc, options.mask_layout, axis=0)
    return out


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
            # deflate, built into every HDF5 (MATLAB, h5dump, C readers): h5py's own LZF is not
            group.create_dataset("kspace", data=kspace, chunks=chunks, compression="gzip", compression_opts=1)
            group.create_dataset("zf", data=zf, chunks=chunks)
            group.create_dataset("mask", data=mask.astype(np.float32))
            group.attrs["scale" if task == "sr" else "acceleration"] = float(acc)
        for key, value in attrs.items():
            f.attrs[key] = value

    write_bytes_synced(path, h5_image(build))


def _write(
    partial: Partial, source: Source, options: PrepareOptions, prepared: list[_Prepared],
    pieces: list[Piece], splits: dict[str, str], masks: dict[float, np.ndarray], sources: dict[str, str],
    progress: Progress | None, check: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """Write the masks and the h5 files a resumed run does not have yet into the partial folder;
    returns the manifest's `volumes` entries (`sources`: each input's sha256).

    `check()` runs before each file (it raises when prepare-data was asked to stop)."""
    write_masks(partial.folder, masks, options.task)
    by_rel = {p.file.rel: p for p in prepared}
    centered = options.mask_layout == "centered"
    reread: tuple[str, np.ndarray] | None = None  # last file read again (stack not kept in memory)

    def write(n: int) -> dict[str, Any]:
        nonlocal reread
        piece = pieces[n]
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
            "affine": prep.affine,
            "normalisation": NORMALISATION,
            "max": prep.max,
            "split": split,
            "slice_axis": options.slice_axis % 3,
            "sftkd_version": __version__,
        }
        write_volume_h5(partial.folder / f"{piece.volume}.h5", images, source_slices, masks, centered, attrs, options.task)
        return {
            "file": f"{piece.volume}.h5",
            "slices": int(len(rows)),
            "split": split,
            "source_file": piece.file.rel,
            "source_sha256": sources[piece.file.rel],
            "source_slices": [int(source_slices[0]), int(source_slices[-1])],
            "max": prep.max,
            "voxel_size": [float(v) for v in prep.voxel_size],
        }

    return partial.write_volumes([piece.volume for piece in pieces], write, check, progress)


# --------------------------------------------------------------------------- the library entry point


def prepare_dataset(
    source: Source, out: str | Path, options: PrepareOptions | None = None,
    progress: Progress | None = None, say: Say | None = None,
) -> PrepareResult:
    """Prepare `source` into the dataset folder `out` (see the module docstring).

    `progress(stage, done, total)` is called with stage 'hash', 'read' and 'write' (a resumed
    run's 'write' counts the files kept); `say(line)` with the one line telling that an
    interrupted run is resumed or, started with other options or inputs, discarded.
    Raises SftkdError for an error in the options or the inputs found before writing, with
    nothing written; PrepareInterrupted on Ctrl-C or SIGTERM, keeping the partial folder to
    resume from (as any error while writing does).
    """
    from filelock import FileLock, Timeout

    start = time.perf_counter()
    options = options or PrepareOptions()
    options.validate()
    out = Path(os.path.abspath(out))
    check_out(out, source)
    if out.is_dir() and not options.force and not _writable(out):
        return _prepare_read_only(source, out, options, progress, start)
    _check_writable(out)
    created = created_parents(out)
    lock_path = out.parent / f".{out.name}.lock"
    lock = FileLock(str(lock_path), timeout=0)
    locked = False
    try:
        with Signals(out) as signals:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    lock.acquire()
                except Timeout:
                    raise SftkdError(f"--out {display_path(out)}: another prepare-data is writing this folder "
                                     f"(lock {display_path(lock_path)}); wait for it to finish") from None
                locked = True
                remove_stale(out)
                finish_interrupted_install(out)
                return _prepare_locked(source, out, options, progress, signals, start, say=say)
            except KeyboardInterrupt:
                raise signals.error() from None
    except OSError as exc:
        raise SftkdError(f"--out {display_path(out)}: cannot write ({os_error_text(exc)})"
                         f"{kept_note(partial_folder(out))}") from None
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


def _writable(out: Path) -> bool:
    """Whether the dataset folder `out` and the folder beside it (temporary folder, lock) can be written."""
    return all(os.access(folder, os.W_OK | os.X_OK) for folder in (out, out.parent))


def _check_writable(out: Path) -> None:
    """Refuse, in one line, an `out` that prepare-data cannot write (`files.check_writable`)."""
    check_writable(out, "--out", extra=16)  # beside it: .<name>.partial, .<name>.hashes.json and .<name>.lock
    if out.exists():
        check_writable(out.parent, "--out")  # the partial folder and the lock go beside it


def _prepare_read_only(
    source: Source, out: Path, options: PrepareOptions, progress: Progress | None, start: float,
) -> PrepareResult:
    """`prepare_dataset` for a dataset folder that cannot be written (nor, maybe, a lock beside it):
    up to date, it is used as it is; anything to write is refused as an unwritable folder.

    Checked without the lock: `install` removes the old manifest before it changes any file and
    puts the new one in last (a new folder appears by one rename), so a manifest read here always
    describes a finished dataset; a folder being installed has none and is not up to date."""
    with Signals(out) as signals:
        try:
            return _prepare_locked(source, out, options, progress, signals, start, lambda: _check_writable(out))
        except KeyboardInterrupt:
            raise signals.error() from None


def _prepare_locked(
    source: Source, out: Path, options: PrepareOptions, progress: Progress | None, signals: Signals,
    start: float, before_writing: Callable[[], None] = lambda: None, say: Say | None = None,
) -> PrepareResult:
    """`prepare_dataset` once the output's lock is held, or where none can be (`_prepare_read_only`);
    complex sources: `data.complex_prepare`. `before_writing()` is called once the dataset is found
    not up to date, before anything is written."""
    existing = existing_dataset(out)
    if getattr(source, "values", "magnitude") == "complex":
        from sftkd_cli.data.complex_prepare import prepare_complex

        manifest, unchanged = prepare_complex(source, out, options, existing, progress, signals.check,
                                              before_writing, say)
        return PrepareResult(out, manifest, unchanged, time.perf_counter() - start)
    user = user_masks(options)
    if options.size is not None:
        _check_mask_shapes(user, options.size)
    files = source.files()
    if say and (note := source.note()):
        say(note)
    # check the split options now (on whole files) rather than after reading every volume
    source.split_pieces([Piece(f.volume, f, (), f.split) for f in files], options.split_request())

    hashes = InputHashes(out, trust=not options.force)
    record = inputs_record(source, options, files, user, hashes, signals.check, progress)
    if up_to_date(out, existing, record, options.force):
        hashes.save()
        return PrepareResult(out, existing, True, time.perf_counter() - start)  # type: ignore[arg-type]
    before_writing()
    _check_header_sizes(source, files, options)

    prepared: list[_Prepared] = []
    in_memory, limit = 0, keep_in_memory_limit()
    for n, file in enumerate(files):
        signals.check()
        prep = _prepare_file(source, file, options)
        in_memory += prep.stack.nbytes  # type: ignore[union-attr]
        if in_memory > limit:
            prep.stack = None
        prepared.append(prep)
        if progress:
            progress("read", n + 1, len(files))
    size = _image_size(prepared, options)
    _check_mask_shapes(user, size)
    padded = _padded_by_downsampling(prepared, options)
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
    check_collisions(out, existing, [f"{v}.h5" for v in seen]
                      + [f"{MASKS}/{group_key(options.task, a)}.npy" for a in masks])

    partial = start_partial(out, record, hashes, say)
    volumes = _write(partial, source, options, prepared, pieces, splits, masks, record["inputs"]["sources"],
                     progress, signals.check)
    acquisition = Acquisition(task=options.task, kspace_layout=options.mask_layout, values="magnitude",
                              channels=1, image_size=(int(size[0]), int(size[1])))
    manifest = dataset_manifest(source, options, acquisition, NORMALISATION,
                                mask_record(options, masks, user, options.mask_layout, generated_axis=0),
                                splits, volumes, record)
    signals.check()  # the last moment to stop: installing is a few renames, never cut short
    partial.install(out, existing, manifest)
    return PrepareResult(out, manifest, False, time.perf_counter() - start, padded)
