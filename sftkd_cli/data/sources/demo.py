"""Built-in demo data: one real T1 brain template that ships inside an installable package.

Templates:
- icbm152 (default): the MNI ICBM152 2009a symmetric T1 template (197x233x189, 1 mm, brain only)
  shipped in the nilearn wheel (`pip install 'sftkd[demo]'`); found without importing nilearn.
- colin27: the Colin27 single-subject T1 (`ch2.nii.gz`, 181x217x181, 1 mm) from Debian's
  `mricron-data` package, searched under /usr/share/mricron and /usr/lib/mricron.
An explicit `template_path` replaces the search for either.

The volume is reoriented to RAS and cut into axial slices shown with anterior at the top
(rows run anterior to posterior, columns left to right in RAS index order). As it is a single
volume, the splits are slabs of consecutive axial slices: slabs of `slab` slices separated
by `gap` skipped slices, assigned in the repeating pattern train, val, train, test, train
(60/20/20). No slice of one split is ever adjacent to a slice of another. Each slab is an
output volume named `<template>_z<first>-<last>` (source slice indices).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli.choices import DEMO_TEMPLATES
from sftkd_cli.data.sources.base import Piece, Source, SourceFile, SplitRequest
from sftkd_cli.files import display_path
from sftkd_cli.errors import SftkdError

TEMPLATES: tuple[str, ...] = DEMO_TEMPLATES
ICBM152_FILE = ("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
COLIN27_DIRS: tuple[Path, ...] = (Path("/usr/share/mricron"), Path("/usr/lib/mricron"))
COLIN27_NAMES: tuple[str, ...] = ("templates/ch2.nii.gz", "ch2.nii.gz", "templates/ch2.nii", "ch2.nii")
SPLIT_PATTERN: tuple[str, ...] = ("train", "val", "train", "test", "train")


def find_icbm152() -> Path:
    """Path of the ICBM152 T1 template inside the installed nilearn package (not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SftkdError(
            "demo template icbm152: the nilearn package is not installed; "
            "expected `pip install 'sftkd[demo]'` (or use --template PATH)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*ICBM152_FILE)
        if path.is_file():
            return path
    raise SftkdError(
        f"demo template icbm152: {'/'.join(ICBM152_FILE)} not found in the installed nilearn; "
        "expected nilearn >= 0.10 (`pip install -U 'sftkd[demo]'`)"
    )


def find_colin27(search: tuple[Path, ...] | None = None) -> Path:
    """Path of Colin27 `ch2.nii.gz` from Debian's mricron-data, searched in `search`
    (default: COLIN27_DIRS)."""
    search = COLIN27_DIRS if search is None else search
    for folder in search:
        for name in COLIN27_NAMES:
            path = folder / name
            if path.is_file():
                return path
    places = ", ".join(str(p) for p in search)
    raise SftkdError(
        f"demo template colin27: ch2.nii.gz not found under {places}; expected "
        "`apt install mricron-data` or --template PATH/TO/ch2.nii.gz"
    )


def slab_splits(kept: np.ndarray, slab: int, gap: int) -> list[tuple[list[int], str]]:
    """Cut the range first..last of `kept` slice indices into slabs separated by gaps.

    Returns (positions into `kept`, split) per slab. A last slab shorter than slab // 2 slices is
    dropped. Slices inside the range that are not in `kept` are left out of their slab.
    """
    if slab < 1 or gap < 1:
        raise SftkdError(f"--slab {slab} --gap {gap}: expected slab >= 1 and gap >= 1")
    if len(kept) == 0:
        return []
    position = {int(s): i for i, s in enumerate(kept)}
    first, last = int(kept[0]), int(kept[-1])
    out: list[tuple[list[int], str]] = []
    start = first
    while start <= last:
        stop = min(start + slab, last + 1)
        if stop - start < max(1, slab // 2) and out:
            break
        rows = [position[s] for s in range(start, stop) if s in position]
        if rows:
            out.append((rows, SPLIT_PATTERN[len(out) % len(SPLIT_PATTERN)]))
        start = stop + gap
    return out


class DemoSource(Source):
    """A packaged T1 template cut into axial slabs (see module docstring)."""

    name = "demo"
    reorient = True  # templates are reoriented to RAS before slicing
    flip_rows = True  # axial slices (z, y, x) with y reversed: anterior at the top

    def __init__(
        self, template: str = "icbm152", template_path: Path | None = None,
        slab: int = 8, gap: int = 2,
    ) -> None:
        super().__init__(None)
        if template not in TEMPLATES:
            raise SftkdError(f"--source {template}: expected one of {', '.join(TEMPLATES)}")
        self.template = template
        self.template_path = None if template_path is None else Path(template_path)
        self.slab = slab
        self.gap = gap
        self._path: Path | None = None

    @property
    def label(self) -> str:
        return f"demo/{self.template}"

    def path(self) -> Path:
        """The template file to use (explicit path or the packaged one)."""
        if self._path is None:
            if self.template_path is not None:
                if not self.template_path.is_file():
                    raise SftkdError(f"{display_path(self.template_path)}: template file not found")
                self._path = self.template_path
            elif self.template == "icbm152":
                self._path = find_icbm152()
            else:
                self._path = find_colin27()
        return self._path

    def options(self) -> dict[str, Any]:
        explicit = None if self.template_path is None else str(self.template_path.resolve())
        return {"template": self.template, "template_path": explicit,
                "slab": self.slab, "gap": self.gap}

    def details(self) -> dict[str, Any]:
        info: dict[str, Any] = {"template": self.template, "file": str(self.path().resolve()),
                                "split_pattern": list(SPLIT_PATTERN),
                                "slab": self.slab, "gap": self.gap}
        if self.template == "icbm152" and self.template_path is None:
            try:
                info["nilearn_version"] = importlib.metadata.version("nilearn")
            except importlib.metadata.PackageNotFoundError:
                pass
        return info

    def input_path(self) -> Path | None:
        return self.path()

    def files(self) -> list[SourceFile]:
        path = self.path()
        if self.template_path is None and self.template == "icbm152":
            rel = "nilearn/" + "/".join(ICBM152_FILE)
        else:
            rel = path.name
        return [SourceFile(path, rel, self.template, self.template)]

    def axes(self, axis: int) -> tuple[int, int, int]:
        """Always axial: (z, y, x) of the RAS volume."""
        return 2, 1, 0

    def pieces(self, file: SourceFile, kept: np.ndarray) -> list[Piece]:
        out = []
        for rows, split in slab_splits(kept, self.slab, self.gap):
            first, last = int(kept[rows[0]]), int(kept[rows[-1]])
            out.append(Piece(f"{self.template}_z{first:03d}-{last:03d}", file, tuple(rows), split))
        return out

    def split_pieces(self, pieces: list[Piece], request: SplitRequest) -> dict[str, str]:
        return {p.volume: p.split or "train" for p in pieces}
