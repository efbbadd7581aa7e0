"""Any folder of 3-D NIfTI volumes, matched by a glob pattern.

A pattern without '/' matches at any depth (recursive, like `**/PATTERN`); a pattern with '/'
is taken relative to ROOT as written. Each file is one output volume, named after its path
relative to ROOT without the .nii/.nii.gz suffix, with '/' and unusual characters replaced by
'_' (e.g. `sub-01/anat/T1w.nii.gz` -> `sub-01_anat_T1w`).

Split by subject for BIDS names, else by file: a file under a `sub-<label>` folder, or whose name
starts `sub-<label>_`, belongs to that subject (`bids_subject`), and all of a subject's sessions
and runs go to one split, so no subject is in both train and val; --val/--test then name subjects
(`--val sub-01`). Any other file is its own group, named by its volume id (seeded fraction or
--val/--test volume ids, as before).

NIfTI files the pattern leaves out only by their suffix (the default '*.nii.gz' and `.nii` files)
are counted in one line (`note`), naming the pattern that takes them: the default itself is kept,
as it is part of every prepared dataset's recorded options.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sftkd_cli.data.sources.base import Source, SourceFile, check_root, check_volume_id, regular_files
from sftkd_cli.data.volumes import NIFTI_SUFFIXES
from sftkd_cli.files import display_path
from sftkd_cli.errors import SftkdError, counted

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: a BIDS subject folder (`sub-01`) or file-name prefix (`sub-01_ses-1_T1w.nii.gz`); labels are alphanumeric
_BIDS_FOLDER = re.compile(r"^sub-[A-Za-z0-9]+$")
_BIDS_FILE = re.compile(r"^(sub-[A-Za-z0-9]+)[_.]")


def volume_id(rel: str) -> str:
    """Output volume id from a path relative to ROOT (see module docstring)."""
    stem = re.sub(r"\.nii(\.gz)?$", "", rel, flags=re.IGNORECASE)
    return _UNSAFE.sub("_", stem).strip("_.") or "volume"


def bids_subject(rel: str) -> str | None:
    """The BIDS subject (`sub-01`) of a path relative to ROOT: its `sub-<label>` folder, else its
    file name's `sub-<label>_` prefix; None for a file with neither."""
    *folders, name = rel.split("/")
    for part in folders:
        if _BIDS_FOLDER.match(part):
            return part
    match = _BIDS_FILE.match(name)
    return match.group(1) if match else None


class NiftiSource(Source):
    """Files under ROOT matching a glob pattern (see module docstring)."""

    name = "nifti"

    def __init__(self, root: Path, pattern: str = "*.nii.gz") -> None:
        super().__init__(root)
        if not pattern or pattern.startswith("/") or ".." in Path(pattern).parts:
            raise SftkdError(f"--pattern {pattern!r}: expected a glob relative to ROOT, e.g. '*.nii.gz'")
        self.pattern = pattern

    def options(self) -> dict[str, Any]:
        return {**super().options(), "pattern": self.pattern}

    def split_record(self, files: list[SourceFile]) -> dict[str, Any]:
        """BIDS files by their subject (earlier versions split sessions file by file): the groups."""
        groups = {file.rel: file.group for file in files if file.group != file.volume}
        return {"groups": groups} if groups else {}

    def _matches(self, root: Path, pattern: str) -> list[Path]:
        return regular_files(root.glob(pattern) if "/" in pattern else root.rglob(pattern))

    def left_out(self) -> tuple[str, str] | None:
        """The NIfTI files under ROOT that --pattern leaves out only by their suffix (.nii for the
        default '*.nii.gz'), in words ('3 .nii files', '1 .nii file'), and the pattern that takes
        them too ('*.nii*'); None when there are none, or the pattern does not end in .nii / .nii.gz."""
        stem = re.sub(r"\.nii(\.gz)?$", "", self.pattern, flags=re.IGNORECASE)
        if stem == self.pattern or self.root is None or not self.root.is_dir():
            return None
        wider = stem + ".nii*"
        taken = set(self._matches(self.root, self.pattern))
        out = [p for p in self._matches(self.root, wider) if p not in taken and p.name.lower().endswith(NIFTI_SUFFIXES)]
        if not out:
            return None
        kinds = {".nii.gz" if p.name.lower().endswith(".nii.gz") else ".nii" for p in out}
        return counted(len(out), f"{kinds.pop()} file" if len(kinds) == 1 else "NIfTI file"), wider

    def note(self) -> str:
        """'--pattern '*.nii.gz' leaves out 3 .nii files under ROOT; --pattern '*.nii*' takes them too'
        (`left_out`); the default pattern is kept, as it is part of every dataset's recorded options."""
        left = self.left_out()
        if left is None:
            return ""
        return (f"--pattern {self.pattern!r} leaves out {left[0]} under {display_path(self.root)}; "  # type: ignore[arg-type]
                f"--pattern {left[1]!r} takes those too")

    def files(self) -> list[SourceFile]:
        root = check_root(self.root)  # type: ignore[arg-type]
        paths = self._matches(root, self.pattern)
        if not paths:
            left = self.left_out()
            hint = f" (it leaves out {left[0]}: --pattern {left[1]!r} takes those)" if left else ""
            raise SftkdError(f"{display_path(root)}: no files match --pattern {self.pattern!r}{hint}")
        out: list[SourceFile] = []
        seen: dict[str, str] = {}
        for path in paths:
            rel = path.relative_to(root).as_posix()
            volume = check_volume_id(volume_id(rel), rel)
            if volume in seen:
                raise SftkdError(
                    f"{rel}: its volume id {volume!r} is also the id of {seen[volume]}; "
                    "expected distinct file names (narrow --pattern)"
                )
            seen[volume] = rel
            out.append(SourceFile(path, rel, volume, bids_subject(rel) or volume))
        return out
