"""Any folder of 3-D NIfTI volumes, matched by a glob pattern.

A pattern without '/' matches at any depth (recursive, like `**/PATTERN`); a pattern with '/'
is taken relative to ROOT as written. Each file is one output volume, named after its path
relative to ROOT without the .nii/.nii.gz suffix, with '/' and unusual characters replaced by
'_' (e.g. `sub-01/anat/T1w.nii.gz` -> `sub-01_anat_T1w`). Split by volume (seeded fraction or
explicit --val/--test ids).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sftkd_cli.data.sources.base import Source, SourceFile, check_root, check_volume_id
from sftkd_cli.files import display_path
from sftkd_cli.errors import SftkdError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def volume_id(rel: str) -> str:
    """Output volume id from a path relative to ROOT (see module docstring)."""
    stem = re.sub(r"\.nii(\.gz)?$", "", rel, flags=re.IGNORECASE)
    return _UNSAFE.sub("_", stem).strip("_.") or "volume"


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

    def files(self) -> list[SourceFile]:
        root = check_root(self.root)  # type: ignore[arg-type]
        matches = root.glob(self.pattern) if "/" in self.pattern else root.rglob(self.pattern)
        paths = sorted(p for p in matches if p.is_file())
        if not paths:
            raise SftkdError(f"{display_path(root)}: no files match --pattern {self.pattern!r}")
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
            out.append(SourceFile(path, rel, volume, volume))
        return out
