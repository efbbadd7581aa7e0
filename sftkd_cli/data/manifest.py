"""What `prepare-data` records about a dataset, shared by the magnitude and the complex writers.

The inputs record (options and source checksums, which decide whether a re-run is a no-op; the
checksums of unchanged inputs come from `InputHashes`' record beside the dataset), the user's mask
files, the fixed masks written as `masks/<group>.npy`, the manifest's `mask` section and the
manifest itself. One writer per kind of data (`data.prepare`, `data.complex_prepare`)
decides what goes into the volume files; both describe the dataset through these functions.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli import __version__
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.data.format import (
    FORMAT, MANIFEST, MASKS, acceleration_key, dataset_task, group_key, manifest_bytes, mask_axis,
)
from sftkd_cli.data.options import OptionError, PrepareOptions
from sftkd_cli.data.sources.base import SPLITS, SourceFile
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import (
    MAX_JSON_BYTES, display_path, read_regular_bytes, replace_atomically, sha256_file, text_name, write_bytes_synced,
)
from sftkd_cli.mri.masks import (
    CenterFractionError, check_mask_acceleration, check_mask_dc, describe_box, describe_mask, load_mask, make_mask,
)

#: acceleration -> (mask file, its mask, the file's sha256)
UserMasks = dict[float, tuple[Path, np.ndarray, str]]
Progress = Callable[[str, int, int], None]


def user_masks(options: PrepareOptions, line: bool = False, source_layout: str | None = None) -> UserMasks:
    """Load the --mask-file masks (format, sampling and DC checked now, shapes once the size is
    known); `line`: fastMRI's 1-D column vectors are accepted too. Each must sample k-space's DC
    in its layout (`check_mask_dc`): --mask-layout's, or `source_layout` where the source decides it."""
    out = {}
    layout = source_layout or options.mask_layout
    if source_layout:
        declared, remedy = f"the source's {layout} k-space", f"expected a mask in the {layout} layout"
    else:
        declared = f"--mask-layout {layout}"
        remedy = f"pass --mask-layout {'corner' if layout == 'centered' else 'centered'}"
    for acc, path in options.mask_files.items():
        mask = load_mask(path, line=True) if line else load_mask(path)
        where = f"--mask-file {display_path(path)}"
        check_mask_acceleration(mask, acc, where)
        check_mask_dc(mask, layout, where, declared, remedy, default_axis=1 if line else 0)
        out[acc] = (Path(path), mask, sha256_file(Path(path)))
    return out


def generated_mask(options: PrepareOptions, size: tuple[int, int], acceleration: float, layout: str,
                   axis: int) -> np.ndarray:
    """The --mask-kind mask for one acceleration (`make_mask`), checked (`check_generated_mask`);
    a --center-fraction that does not fit it is an OptionError naming the option."""
    try:
        mask = make_mask(options.mask_kind, size, acceleration, seed=options.seed,
                         center_fraction=options.center_fraction, layout=layout, axis=axis)
    except CenterFractionError as exc:
        raise OptionError("center_fraction", exc.fraction, exc.problem) from None
    check_generated_mask(mask, acceleration, options, size)
    return mask


def check_generated_mask(mask: np.ndarray, acceleration: float, options: PrepareOptions, size: tuple[int, int]) -> None:
    """A generated mask must sample what its acceleration says, as training reads it back
    (`check_mask_acceleration`): refused now, not when the dataset is first used."""
    check_mask_acceleration(mask, acceleration, f"--acc {acceleration:g} on {size[0]}x{size[1]} images "
                                                f"(--mask-kind {options.mask_kind}, --seed {options.seed})")


class InputHashes:
    """The sha256 of input files, re-using the one recorded for a file whose size and modification
    time (st_size, st_mtime_ns) are those it had when it was hashed, as make and rsync do: an
    up-to-date re-run then reads no input. Only a change that keeps both goes unseen (a same-size
    edit that sets the time back, a same-size file copied over with its time kept); `--force`
    hashes every file again.

    The record is `.<name>.hashes.json` beside the dataset folder `<name>` (as its lock is), not
    the manifest: the manifest's bytes are the dataset's fingerprint, which must not depend on
    when the inputs were copied. It maps each input's absolute path to {"size", "mtime_ns",
    "sha256"}; a record that is missing or unreadable (datasets prepared before it) only means
    hashing every file once more. A file changed less than `RECENT_NS` before it was looked at
    is not recorded (a later change could keep its coarse time stamp): it is hashed next time.
    """

    #: files modified this recently (ns) are not recorded: above the coarsest time stamps (FAT's 2 s)
    RECENT_NS = 3_000_000_000

    def __init__(self, out: Path, trust: bool) -> None:
        self.path = out.parent / f".{out.name}.hashes.json"
        self.known = self._read() if trust else {}
        self.seen: dict[str, dict[str, Any]] = {}

    def _read(self) -> dict[str, Any]:
        """The recorded entries; {} when there is no readable record (a cache, never an error)."""
        try:
            known = json.loads(read_regular_bytes(self.path, "hashes", MAX_JSON_BYTES, follow_links=False))
        except (SftkdError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    def sha256(self, path: Path) -> str:
        """The file's sha256: the recorded one when its size and mtime are unchanged, else read."""
        key = os.path.abspath(path)
        now = time.time_ns()
        try:
            info = os.stat(path)
        except OSError:
            return sha256_file(path)  # its one-line error
        entry = self.known.get(key)
        if (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and entry.get("size") == info.st_size and entry.get("mtime_ns") == info.st_mtime_ns):
            self.seen[key] = entry
            return str(entry["sha256"])
        digest = sha256_file(path)
        if info.st_mtime_ns < now - self.RECENT_NS:
            self.seen[key] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": digest}
        return digest

    def save(self) -> None:
        """Record the files hashed in this run (only when that changes the record). Best effort:
        a record that cannot be written means hashing again next time, the dataset is complete."""
        if self.seen == self.known:
            return
        try:
            replace_atomically(self.path, (json.dumps(self.seen, indent=1, sort_keys=True) + "\n").encode())
        except OSError:
            pass


def inputs_record(source: Any, options: PrepareOptions, files: list[SourceFile], user: UserMasks,
                  hashes: InputHashes, check: Callable[[], None], progress: Progress | None) -> dict[str, Any]:
    """The options and input checksums a dataset was made from (equal record: nothing to redo);
    `hashes` gives each file's sha256. `check()` runs before each file (it raises when
    prepare-data was asked to stop)."""
    checksums = {}
    for n, file in enumerate(files):
        check()
        checksums[file.rel] = hashes.sha256(file.path)
        if progress:
            progress("hash", n + 1, len(files))
    inputs: dict[str, Any] = {
        "sources": checksums,
        "mask_files": {acceleration_key(a): u[2] for a, u in sorted(user.items())},
    }
    inputs.update(source.split_record(files))
    return {"options": {"source": source.name, **source.options(), **options.record()}, "inputs": inputs}


def write_masks(folder: Path, masks: Mapping[float, np.ndarray], task: str) -> None:
    """Each fixed mask as `folder/masks/<group>.npy` (float32), over any there (a resumed run's)."""
    (folder / MASKS).mkdir(parents=True, exist_ok=True)
    for acc, mask in masks.items():
        buffer = io.BytesIO()
        np.save(buffer, mask.astype(np.float32))
        write_bytes_synced(folder / MASKS / f"{group_key(task, acc)}.npy", buffer.getvalue())


def mask_record(options: PrepareOptions, masks: Mapping[float, np.ndarray], user: UserMasks,
                layout: str, generated_axis: int) -> dict[str, Any]:
    """The manifest's `mask` section, in k-space `layout`. Generated masks sample whole lines along
    `generated_axis` (0: rows, the paper's; 1: columns, fastMRI's); a user's mask is described from
    its content (`describe_mask`: the axis of its whole lines, or None for a 2-D pattern). "axis" is
    the masks' common axis, None when they differ or sample no whole lines; an acceleration records
    its own "axis" when its mask is a user's or the masks differ."""
    sr = options.task == "sr"
    per_acc = {}
    axes: dict[str, int | None] = {}
    for acc, mask in masks.items():
        key = group_key(options.task, acc)
        # the central k-space box (sr) has no whole lines: its rows and columns are recorded as "box"
        described = describe_box(mask, generated_axis) if sr else describe_mask(mask, generated_axis)
        axes[key] = described["axis"]
        per_acc[key] = {
            "file": f"{MASKS}/{key}.npy",
            "lines": described["lines"],
            "sampled_fraction": described["sampled_fraction"],
            "origin": "sr-box" if sr else "file" if acc in user else options.mask_kind,
        }
        if sr:
            per_acc[key]["box"] = described["box"]
        if acc in user:
            per_acc[key]["axis"] = described["axis"]
            per_acc[key]["source_file"] = text_name(str(user[acc][0].resolve()))
            per_acc[key]["source_sha256"] = user[acc][2]
    common = set(axes.values()).pop() if len(set(axes.values())) == 1 else None
    if common is None:  # every mask's own axis (`data.format.mask_axis` reads it)
        for key, axis in axes.items():
            per_acc[key]["axis"] = axis
    return {
        "kind": "sr-box" if sr else options.mask_kind,
        "seed": options.seed,
        "layout": layout,
        "axis": common,
        "center_fraction": options.center_fraction,
        "files": {k: v["file"] for k, v in per_acc.items()},
        "per_acceleration": per_acc,
    }


def dataset_manifest(source: Any, options: PrepareOptions, acquisition: Acquisition, normalisation: str,
                     mask: dict[str, Any], splits: Mapping[str, str], volumes: dict[str, dict[str, Any]],
                     record: dict[str, Any], details: Mapping[str, Any] | None = None,
                     after_size: Mapping[str, Any] | None = None, after_task: Mapping[str, Any] | None = None,
                     ) -> dict[str, Any]:
    """The dataset's manifest.json content (deterministic: no timestamps). `details` extend the
    source's own; `after_size` / `after_task` are a kind of data's extra keys (complex: target size, values)."""
    assert acquisition.image_size is not None
    split_lists = {name: [v for v in volumes if splits[v] == name] for name in SPLITS}
    return {
        "format": FORMAT,
        "sftkd_version": __version__,
        "source": source.label,
        "source_root": None if source.root is None else str(source.root.resolve()),
        "source_details": {**source.details(), **(details or {})},
        "image_size": list(acquisition.image_size),
        **(after_size or {}),
        "task": options.task,
        **(after_task or {}),
        "accelerations": [float(a) for a in options.accelerations],
        **({"scales": [float(a) for a in options.accelerations]} if options.task == "sr" else {}),
        "normalisation": normalisation,
        "acquisition": acquisition.record(),
        "mask": mask,
        "splits": split_lists,
        "slices": {name: sum(volumes[v]["slices"] for v in ids) for name, ids in split_lists.items()},
        "volumes": volumes,
        "options": record["options"],
        "inputs": record["inputs"],
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json into the finished dataset `folder`, recording first in `manifest` the
    size of each file there ("file_bytes", read by `output.up_to_date`: a file cut short or
    replaced since is seen without reading it)."""
    manifest["file_bytes"] = {path.relative_to(folder).as_posix(): path.stat().st_size
                              for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    write_bytes_synced(folder / MANIFEST, manifest_bytes(manifest))


def _source_text(manifest: Mapping[str, Any]) -> str:
    """Source label and where it came from (folder, or package version for the demo)."""
    details = manifest.get("source_details", {})
    if manifest.get("source_root"):
        return f"{manifest['source']} ({display_path(manifest['source_root'])})"
    if details.get("nilearn_version"):
        return f"{manifest['source']} (nilearn {details['nilearn_version']})"
    return f"{manifest['source']} ({display_path(details.get('file', ''))})"


def describe_manifest(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A dataset in words, as (what, value) rows: its source, volumes and slices per split, image
    size, and its masks (lines per acceleration and layout) or super-resolution scales."""
    m = manifest
    splits = [s for s in SPLITS if m["splits"].get(s)]
    h, w = m["image_size"]
    rows = [("source", _source_text(m)),
            ("volumes", ", ".join(f"{s} {len(m['splits'][s])}" for s in splits)),
            ("slices", ", ".join(f"{s} {m['slices'][s]}" for s in splits)),
            ("image size", f"{h} x {w}")]
    mask = m["mask"]
    if dataset_task(m) == "sr":
        boxes = ", ".join(
            f"{a:g}x: low resolution {' x '.join(map(str, mask['per_acceleration'][group_key('sr', a)]['box']))}"
            for a in m["accelerations"]
        )
        return rows + [("task", "super-resolution (input: low-resolution image interpolated to full size)"),
                       ("scales", boxes), ("k-space layout", f"{mask['layout']}, central box kept")]
    common = mask.get("axis")  # 0: rows sampled (the paper's), 1: columns (fastMRI), None: per acceleration
    lines = []
    for a in m["accelerations"]:
        entry, axis = mask["per_acceleration"][group_key("recon", a)], mask_axis(mask, group_key("recon", a))
        if axis is None:
            lines.append(f"{a:g}x: {100 * entry['sampled_fraction']:.3g}% of k-space, no whole lines ({entry['origin']})")
        else:
            word = "lines" if common is not None else ("rows", "columns")[axis]
            lines.append(f"{a:g}x: {entry['lines']}/{(h, w)[axis]} {word} ({entry['origin']})")
    sampled = f"{('rows', 'columns')[common]} sampled (axis {common})" if common is not None else "sampling per acceleration"
    return rows + [("accelerations", ", ".join(lines)), ("mask layout", f"{mask['layout']}, {sampled}, seed {mask['seed']}")]
