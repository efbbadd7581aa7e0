"""MRBrainS brain MRI (Mendrik et al., 2015), in the MRBrainS18 or MRBrainS13 folder layout.

    MRBrainS18: ROOT/training/<id>/pre/reg_T1.nii.gz  (pre/FLAIR.nii.gz, pre/reg_IR.nii.gz, pre/T1.nii.gz,
                pre/IR.nii.gz, orig/, segm.nii.gz)
    MRBrainS13: ROOT/TrainingData/<n>/T1.nii      (T1_IR.nii, T2_FLAIR.nii, LabelsForTraining.nii)

ROOT may also be the training/ (TrainingData/) folder itself. Only the chosen modality's
preprocessed image in FLAIR space is read: for MRBrainS18 `pre/reg_T1`, `pre/FLAIR` or
`pre/reg_IR` (T1 and IR bias-corrected and registered to the FLAIR, what the paper and every
public MRBrainS18 loader use); `pre/T1` and `pre/IR` are the native, unregistered 3-D scans and,
like the labels and `orig/`, are never read. Each subject is one output volume named after its
folder; slices run along the last axis (48 axial slices of 240x240 in MRBrainS18). Split by
volume: explicit --val/--test ids, or a seeded fraction (default 25 %: of 7 volumes, 5 train and
2 val, as in the paper).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkd_cli.data.sources.base import Source, SourceFile, check_link, check_root, check_volume_id
from sftkd_cli.data.volumes import NIFTI_SUFFIXES
from sftkd_cli.files import display_path
from sftkd_cli.errors import SftkdError

# modality -> file name without suffix, per layout
MODALITIES: dict[str, dict[str, str]] = {
    "T1": {"mrbrains18": "pre/reg_T1", "mrbrains13": "T1"},
    "FLAIR": {"mrbrains18": "pre/FLAIR", "mrbrains13": "T2_FLAIR"},
    "IR": {"mrbrains18": "pre/reg_IR", "mrbrains13": "T1_IR"},
}
_SUBFOLDER = {"mrbrains18": "training", "mrbrains13": "TrainingData"}


def _find(folder: Path, stem: str) -> Path | None:
    """`folder/stem.nii.gz` or `folder/stem.nii`, whichever exists (a dangling link is refused)."""
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if check_link(path).is_file():
            return path
    return None


def _subjects(base: Path, layout: str) -> list[Path]:
    """Subject folders under `base` for a layout: MRBrainS18 ones hold pre/, MRBrainS13 ones a
    T1/T1_IR/T2_FLAIR image."""
    if not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir()):
        if not d.is_dir():
            continue
        if layout == "mrbrains18" and (d / "pre").is_dir():
            out.append(d)
        elif layout == "mrbrains13" and any(_find(d, m["mrbrains13"]) for m in MODALITIES.values()):
            out.append(d)
    return out


class MRBrainsSource(Source):
    """One modality of the MRBrainS18 or MRBrainS13 subjects (see module docstring)."""

    name = "mrbrains"

    def __init__(self, root: Path, modality: str = "T1") -> None:
        super().__init__(root)
        if modality not in MODALITIES:
            raise SftkdError(f"--modality {modality}: expected one of {', '.join(MODALITIES)}")
        self.modality = modality
        self.layout: str | None = None

    @property
    def label(self) -> str:
        return self.layout or self.name

    def options(self) -> dict[str, Any]:
        return {**super().options(), "modality": self.modality}

    def details(self) -> dict[str, Any]:
        return {"layout": self.layout, "modality": self.modality}

    def files(self) -> list[SourceFile]:
        root = check_root(self.root)  # type: ignore[arg-type]
        for layout in ("mrbrains18", "mrbrains13"):
            subjects = _subjects(root / _SUBFOLDER[layout], layout) or _subjects(root, layout)
            if subjects:
                self.layout = layout
                break
        else:
            raise SftkdError(
                f"{display_path(root)}: no MRBrainS subjects found; expected "
                "training/<id>/pre/reg_T1.nii.gz (MRBrainS18) or TrainingData/<n>/T1.nii (MRBrainS13)"
            )
        stem = MODALITIES[self.modality][layout]
        out = []
        for subject in subjects:
            path = _find(subject, stem)
            if path is None:
                raise SftkdError(
                    f"{display_path(subject)}: {stem}.nii.gz (or .nii) not found; "
                    f"expected the {self.modality} image of every subject"
                )
            volume = check_volume_id(subject.name, display_path(subject))
            out.append(SourceFile(path, path.relative_to(root).as_posix(), volume, volume))
        return out
