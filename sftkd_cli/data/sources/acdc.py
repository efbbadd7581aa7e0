"""ACDC cardiac cine MRI (Bernard et al., 2018) in its published folder layout.

    ROOT/training/patient001/patient001_frame01.nii.gz      <- image frames used (ED and ES)
                             patient001_frame01_gt.nii.gz   <- labels: never used
                             patient001_4d.nii.gz           <- full cine: never used
                             Info.cfg                       <- "ED: 1", "ES: 12", ...
    ROOT/testing/patient101/...                             (optional)

ROOT may also be a folder holding patientNNN/ folders directly (treated as training/). When a
patient has an Info.cfg, exactly its ED and ES frames are used (a listed frame that is missing is
an error); without one, every `patientNNN_frameXX.nii[.gz]` image is used. Each frame is one
output volume `patientNNN_frameXX`; slices run along the last axis.

Splits are by patient, so both frames of a patient are always in the same split. By default
training/ is train and testing/ is val (the paper: 150 training and 50 validation patients); with
no testing/ folder a seeded 25 % of the training patients is val. With --val/--val-fraction the
training patients are split that way and testing/ patients become test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sftkd_cli.data.sources.base import (
    Piece, Source, SourceFile, SplitRequest, check_link, check_root, split_groups,
)
from sftkd_cli.files import display_path
from sftkd_cli.errors import SftkdError, os_error_text

FRAME_FILE = re.compile(r"^(patient\d+)_frame(\d+)\.nii(\.gz)?$")
PATIENT_DIR = re.compile(r"^patient\d+$")
FOLDERS: tuple[str, ...] = ("training", "testing")


def read_info_cfg(path: Path) -> dict[str, str]:
    """Parse ACDC's Info.cfg ('Key: value' lines) into a dict."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise SftkdError(f"{display_path(path)}: cannot read ({os_error_text(exc)})") from exc
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def ed_es_frames(path: Path) -> set[int]:
    """The ED and ES frame numbers listed in an Info.cfg."""
    info = read_info_cfg(path)
    frames = set()
    for key in ("ED", "ES"):
        try:
            frames.add(int(float(info[key])))
        except (KeyError, ValueError):
            raise SftkdError(
                f"{display_path(path)}: expected a line '{key}: <frame number>'"
            ) from None
    return frames


class AcdcSource(Source):
    """ACDC image frames, one output volume per ED/ES frame (see module docstring)."""

    name = "acdc"

    def __init__(self, root: Path) -> None:
        super().__init__(root)

    def _patient_dirs(self) -> list[tuple[str, Path]]:
        root = check_root(self.root)  # type: ignore[arg-type]
        found: list[tuple[str, Path]] = []
        for folder in FOLDERS:
            if (root / folder).is_dir():
                found += [(folder, d) for d in sorted((root / folder).iterdir())
                          if d.is_dir() and PATIENT_DIR.match(d.name)]
        if not any((root / f).is_dir() for f in FOLDERS):
            found = [("training", d) for d in sorted(root.iterdir())
                     if d.is_dir() and PATIENT_DIR.match(d.name)]
        return found

    def files(self) -> list[SourceFile]:
        root = self.root
        assert root is not None
        out: list[SourceFile] = []
        seen: dict[str, Path] = {}
        for folder, pdir in self._patient_dirs():
            if pdir.name in seen:
                raise SftkdError(
                    f"{display_path(pdir)}: patient id also in {display_path(seen[pdir.name])}; "
                    "expected unique patient ids"
                )
            seen[pdir.name] = pdir
            frames = {}
            for f in sorted(pdir.iterdir()):
                m = FRAME_FILE.match(f.name)
                if m and m.group(1) == pdir.name and check_link(f).is_file():
                    frames[int(m.group(2))] = f
            cfg = pdir / "Info.cfg"
            if check_link(cfg).is_file():
                wanted = ed_es_frames(cfg)
                for frame in sorted(wanted):
                    if frame not in frames:
                        raise SftkdError(
                            f"{display_path(cfg)}: lists frame {frame} but "
                            f"{pdir.name}_frame{frame:02d}.nii.gz is missing in {display_path(pdir)}"
                        )
                frames = {k: v for k, v in frames.items() if k in wanted}
            for frame in sorted(frames):
                path = frames[frame]
                volume = path.name.split(".nii")[0]
                rel = path.relative_to(root).as_posix()
                out.append(SourceFile(path, rel, volume, pdir.name, None, folder))
        if not out:
            raise SftkdError(
                f"{display_path(root)}: no ACDC image frames found; expected "
                "training/patientNNN/patientNNN_frameXX.nii.gz (or patientNNN/ folders in it)"
            )
        return out

    def split_pieces(self, pieces: list[Piece], request: SplitRequest) -> dict[str, str]:
        testing = {p.file.group for p in pieces if p.file.folder == "testing"}
        explicit_val = bool(request.val) or request.val_fraction is not None
        if testing and not explicit_val:
            fixed = {g: "val" for g in testing}
            default_val = 0.0
        else:
            fixed = {g: "test" for g in testing}
            default_val = self.default_val_fraction
        by_group = split_groups([p.file.group for p in pieces], fixed, request, default_val)
        return {p.volume: by_group[p.file.group] for p in pieces}

    def details(self) -> dict[str, Any]:
        return {"layout": "ACDC training|testing/patientNNN/patientNNN_frameXX.nii.gz (ED, ES)"}
