"""What a data source is: a list of input files, how each becomes slices, and how volumes are split.

A source module only knows its folder layout. Everything else (validation, cropping, masks,
h5 writing, atomic output) is shared in `sftkd_cli.data.prepare`; the source's command options
and defaults are its `SourceSpec` in `sftkd_cli.data.catalog` (the spec's name is the class's
`name`, and its options are the constructor's keywords).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli.files import display_path, text_name
from sftkd_cli.data.option_names import OptionError
from sftkd_cli.errors import SftkdError

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SourceFile:
    """One input volume file.

    rel: its path relative to the source root, as text (`text_name`: a name that is not UTF-8
    keeps its bytes as \\xNN, so the h5 attributes and manifest.json that record it are valid);
    volume: id of the output volume (also the h5 file name); group: the unit that is split
    (a patient for ACDC, a BIDS subject, else the volume); split: a split fixed by the folder layout, or None;
    folder: the layout folder it came from (e.g. ACDC's training/testing), informative.
    """

    path: Path
    rel: str
    volume: str
    group: str
    split: str | None = None
    folder: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rel", text_name(self.rel))


@dataclass(frozen=True)
class Piece:
    """One output volume cut from a source file: the rows of the prepared stack it holds."""

    volume: str
    file: SourceFile
    rows: tuple[int, ...]
    split: str | None


@dataclass(frozen=True)
class SplitRequest:
    """How to split groups that the layout leaves open (see `split_groups`)."""

    val_fraction: float | None = None
    test_fraction: float | None = None
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    seed: int = 42


def check_volume_id(volume: str, where: str) -> str:
    """Volume ids become file names: letters, digits, '.', '_' and '-' only."""
    if not _SAFE_ID.match(volume):
        raise SftkdError(f"{where}: volume id {volume!r} must use only letters, digits, '.', '_', '-'")
    return volume


def check_root(root: Path) -> Path:
    """The input folder must exist and be a directory."""
    if not root.exists():
        raise SftkdError(f"{display_path(root)}: input folder not found")
    if not root.is_dir():
        raise SftkdError(f"{display_path(root)}: expected a folder, found a file")
    return root


def check_link(path: Path) -> Path:
    """`path`, unless it is a symbolic link whose target cannot be reached (missing, on an unmounted
    drive, a loop of links): refused naming both, as skipping it would silently prepare a subset."""
    if path.is_symlink() and not path.exists():
        raise SftkdError(f"{display_path(path)}: a symbolic link to {os.readlink(path)}, which cannot be reached "
                         "(missing, or on a drive not mounted); expected the input file it points to")
    return path


def regular_files(paths: Iterable[Path]) -> list[Path]:
    """The regular files among `paths` (folders and other entries left out), sorted; a dangling
    symbolic link among them is refused (`check_link`), not skipped."""
    return sorted(p for p in paths if check_link(p).is_file())


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's round() rounds halves to even)."""
    return int(math.floor(x + 0.5))


def split_groups(
    groups: list[str], fixed: dict[str, str], request: SplitRequest, default_val_fraction: float
) -> dict[str, str]:
    """Assign every group to train/val/test.

    Groups in `fixed` keep their split. Of the others: ids named in `request.val`/`request.test`
    go there; then, in a seeded permutation, round(n * fraction) groups go to val and test
    (n = number of open groups; val gets at least one when its fraction is > 0 and n >= 2);
    the rest is train. An explicit list and a fraction for the same split are exclusive.
    """
    open_groups = sorted(g for g in set(groups) if g not in fixed)
    result = {g: s for g, s in fixed.items() if g in set(groups)}
    for name, ids, fraction in (
        ("val", request.val, request.val_fraction),
        ("test", request.test, request.test_fraction),
    ):
        if ids and fraction is not None:
            raise SftkdError(f"--{name} and --{name}-fraction: give one or the other, not both")
        for gid in ids:
            if gid not in open_groups:
                known = ", ".join(open_groups[:8]) + (", ..." if len(open_groups) > 8 else "")
                raise OptionError(name, gid, f"not found; expected one of: {known or 'none'}")
            if gid in result:
                raise OptionError(name, gid, f"already assigned to {result[gid]}")
            result[gid] = name
    rest = [g for g in open_groups if g not in result]
    order = [rest[i] for i in np.random.default_rng(request.seed).permutation(len(rest))]
    n = len(open_groups)
    for name, ids, fraction in (
        ("val", request.val, request.val_fraction),
        ("test", request.test, request.test_fraction),
    ):
        if ids:
            continue
        if fraction is None:
            fraction = default_val_fraction if name == "val" else 0.0
        if not 0.0 <= fraction < 1.0:
            raise OptionError(f"{name}_fraction", fraction, "expected a number in [0, 1)")
        count = round_half_up(n * fraction)
        if name == "val" and fraction > 0 and n >= 2:
            count = max(count, 1)
        for gid in order[:count]:
            result[gid] = name
        order = order[count:]
    for gid in order:
        result[gid] = "train"
    if open_groups and not any(result[g] == "train" for g in open_groups):
        raise SftkdError(
            f"split: no volumes left for training out of {n}; lower --val-fraction/--test-fraction"
        )
    return result


class Source:
    """Base class: a named folder layout that lists input files.

    Subclasses set `name` and implement `files()`. They may override `axes()` and set
    `flip_rows` (orientation), override `pieces()` (one output volume per file by default) and
    `fixed_splits()`.
    """

    name: str = "source"
    default_val_fraction: float = 0.25
    reorient: bool = False  # reorient to RAS (closest canonical) before slicing
    flip_rows: bool = False  # image rows run against their volume axis (e.g. anterior at the top)

    def __init__(self, root: Path | None) -> None:
        self.root = None if root is None else Path(root)

    @property
    def label(self) -> str:
        """Short name recorded as the dataset's `source` (e.g. 'acdc', 'demo/icbm152')."""
        return self.name

    def options(self) -> dict[str, Any]:
        """Source-specific options recorded in the manifest (compared on re-runs)."""
        return {"root": None if self.root is None else str(self.root.resolve())}

    def split_record(self, files: list[SourceFile]) -> dict[str, Any]:
        """How the files are grouped for the split, where a source's grouping changed between
        versions (recorded with the inputs, so a dataset split the old way is prepared again)."""
        return {}

    def details(self) -> dict[str, Any]:
        """Extra facts about the source (recorded, not compared on re-runs)."""
        return {}

    def input_path(self) -> Path | None:
        """The folder (or single file) the inputs live in: never written to, never inside --out."""
        return self.root

    def files(self) -> list[SourceFile]:
        """The input files, sorted; raises when there are none."""
        raise NotImplementedError

    def note(self) -> str:
        """One line prepare-data prints about the inputs `files()` found (e.g. NIfTI files its
        pattern leaves out); '' when there is nothing to say."""
        return ""

    def axes(self, axis: int) -> tuple[int, int, int]:
        """Volume axes that become (slice, row, column) for slicing along `axis`."""
        rest = [a for a in range(3) if a != axis]
        return axis, rest[0], rest[1]

    def slices(self, volume: np.ndarray, axis: int) -> np.ndarray:
        """A 3-D volume as (S, H, W) slices along `axis` (order given by `axes`, rows reversed
        with `flip_rows`)."""
        stack = np.transpose(volume, self.axes(axis))
        return stack[:, ::-1, :] if self.flip_rows else stack

    def slice_index_map(self, axis: int, shape: tuple[int, int, int]) -> np.ndarray:
        """4x4 matrix taking (slice, row, column, 1) of `slices(volume, axis)` to the voxel index
        (i, j, k, 1) of a volume of `shape`: the link from prepared pixels back to the input."""
        order = self.axes(axis)
        index = np.zeros((4, 4))
        index[3, 3] = 1.0
        for stacked, voxel in enumerate(order):
            index[voxel, stacked] = 1.0
        if self.flip_rows:
            index[order[1], 1], index[order[1], 3] = -1.0, shape[order[1]] - 1.0
        return index

    def pieces(self, file: SourceFile, kept: np.ndarray) -> list[Piece]:
        """Output volumes made from one file, given the indices of its kept slices."""
        return [Piece(file.volume, file, tuple(range(len(kept))), file.split)]

    def split_pieces(self, pieces: list[Piece], request: SplitRequest) -> dict[str, str]:
        """Split for every output volume: fixed ones kept, others split by group."""
        fixed = {p.file.group: p.split for p in pieces if p.split is not None}
        by_group = split_groups(
            [p.file.group for p in pieces], fixed, request, self.default_val_fraction
        )
        return {p.volume: by_group[p.file.group] for p in pieces}
