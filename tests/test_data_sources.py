"""Source layouts (ACDC, MRBrainS18/13, NIfTI folders, demo templates) and the split rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sftkd_cli.data.sources import (
    AcdcSource, DemoSource, FastMRISource, MRBrainsSource, NiftiSource, SplitRequest, split_groups,
)
from sftkd_cli.data.sources.demo import SPLIT_PATTERN, find_colin27, find_icbm152, slab_splits
from sftkd_cli.data.sources.nifti import bids_subject, volume_id
from sftkd_cli.errors import SftkdError


# ----------------------------------------------------------------- splits


def test_split_groups_seeded_fraction_and_deterministic() -> None:
    groups = [f"g{i}" for i in range(7)]
    a = split_groups(groups, {}, SplitRequest(seed=42), 0.25)
    b = split_groups(list(reversed(groups)), {}, SplitRequest(seed=42), 0.25)
    assert a == b
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 5, "val": 2, "test": 0}  # round(7 * 0.25) = 2, as in the paper
    c = split_groups(groups, {}, SplitRequest(seed=7), 0.25)
    assert sorted(c.values()) == sorted(a.values())


def test_split_groups_explicit_fixed_and_errors() -> None:
    groups = ["a", "b", "c", "d"]
    out = split_groups(groups, {"d": "val"}, SplitRequest(val=("a",), test=("b",)), 0.25)
    assert out == {"a": "val", "b": "test", "c": "train", "d": "val"}
    with pytest.raises(SftkdError, match="--val zz: not found"):
        split_groups(groups, {}, SplitRequest(val=("zz",)), 0.25)
    with pytest.raises(SftkdError, match="--val and --val-fraction"):
        split_groups(groups, {}, SplitRequest(val=("a",), val_fraction=0.5), 0.25)
    with pytest.raises(SftkdError, match="no volumes left for training"):
        split_groups(groups, {}, SplitRequest(val_fraction=0.5, test_fraction=0.5), 0.25)
    with pytest.raises(SftkdError, match="--val-fraction 1.5"):
        split_groups(groups, {}, SplitRequest(val_fraction=1.5), 0.25)


def test_split_groups_small_counts() -> None:
    assert split_groups(["a"], {}, SplitRequest(), 0.25) == {"a": "train"}
    two = split_groups(["a", "b"], {}, SplitRequest(), 0.25)
    assert sorted(two.values()) == ["train", "val"]  # val gets at least one of two


# ----------------------------------------------------------------- demo slabs


@pytest.mark.parametrize("slab, gap", [(8, 2), (5, 1), (3, 4), (10, 3)])
def test_slab_splits_gap_between_all_slabs(slab: int, gap: int) -> None:
    kept = np.arange(17, 147)
    slabs = slab_splits(kept, slab, gap)
    assert [s for _, s in slabs] == [SPLIT_PATTERN[i % 5] for i in range(len(slabs))]
    source = [kept[rows] for rows, _ in slabs]
    for a, b in zip(source, source[1:]):
        assert b[0] - a[-1] == gap + 1  # exactly `gap` slices skipped
        assert np.all(np.diff(a) == 1) and len(a) <= slab
    assert {"train", "val", "test"} <= {s for _, s in slabs}


def test_slab_splits_errors_and_empty() -> None:
    with pytest.raises(SftkdError, match="--gap 0"):
        slab_splits(np.arange(10), 4, 0)
    assert slab_splits(np.array([], dtype=int), 4, 1) == []


@pytest.mark.nilearn  # the demo template ships in nilearn (optional: sftkd[demo])
def test_find_icbm152_without_importing_nilearn() -> None:
    import sys

    had = "nilearn" in sys.modules
    path = find_icbm152()
    assert path.name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" and path.is_file()
    assert ("nilearn" in sys.modules) == had


def test_find_icbm152_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SftkdError, match=r"nilearn package is not installed.*sftkd\[demo\]"):
        find_icbm152()


def test_find_colin27(tmp_path: Path) -> None:
    with pytest.raises(SftkdError, match="colin27: ch2.nii.gz not found"):
        find_colin27((tmp_path / "share", tmp_path / "lib"))
    (tmp_path / "lib" / "templates").mkdir(parents=True)
    (tmp_path / "lib" / "templates" / "ch2.nii.gz").write_bytes(b"x")
    assert find_colin27((tmp_path / "share", tmp_path / "lib")) == tmp_path / "lib/templates/ch2.nii.gz"


def test_demo_source_options() -> None:
    with pytest.raises(SftkdError, match="--source mni: expected one of icbm152, colin27"):
        DemoSource("mni")
    with pytest.raises(SftkdError, match="nothere.nii.gz: template file not found"):
        DemoSource("colin27", Path("nothere.nii.gz")).files()


# ----------------------------------------------------------------- ACDC


def test_acdc_uses_ed_es_frames_only(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1, 2), testing=(101,))
    # an extra frame file that Info.cfg does not list as ED/ES is not used either
    nifti_writer.write(root / "training/patient001/patient001_frame05.nii.gz", nifti_writer.phantom())
    files = AcdcSource(root).files()
    assert [f.volume for f in files] == [
        "patient001_frame01", "patient001_frame11", "patient002_frame01", "patient002_frame12",
        "patient101_frame01", "patient101_frame111",
    ]
    assert all("_gt" not in f.rel and "_4d" not in f.rel for f in files)
    assert {f.group for f in files} == {"patient001", "patient002", "patient101"}
    assert files[0].rel == "training/patient001/patient001_frame01.nii.gz"
    assert [f.folder for f in files][-1] == "testing"


def test_acdc_without_info_cfg_uses_all_image_frames(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1,))
    (root / "training/patient001/Info.cfg").unlink()
    assert len(AcdcSource(root).files()) == 2


def test_acdc_missing_listed_frame(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1,))
    (root / "training/patient001/patient001_frame11.nii.gz").unlink()
    with pytest.raises(SftkdError, match=r"Info.cfg: lists frame 11 but patient001_frame11.nii.gz is missing"):
        AcdcSource(root).files()


def test_acdc_bad_info_cfg(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1,))
    (root / "training/patient001/Info.cfg").write_text("Group: DCM\n")
    with pytest.raises(SftkdError, match=r"Info.cfg: expected a line 'ED: <frame number>'"):
        AcdcSource(root).files()


def test_acdc_patient_folders_directly_under_root(tmp_path: Path, nifti_writer) -> None:
    nifti_writer.acdc_tree(tmp_path / "acdc", training=(1, 2))
    assert len(AcdcSource(tmp_path / "acdc" / "training").files()) == 4


def test_acdc_empty_and_missing_roots(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SftkdError, match="no ACDC image frames found"):
        AcdcSource(tmp_path / "empty").files()
    with pytest.raises(SftkdError, match="input folder not found"):
        AcdcSource(tmp_path / "missing").files()


# ----------------------------------------------------------------- MRBrainS


def test_mrbrains18_layout(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.mrbrains18_tree(tmp_path / "mrb18")
    src = MRBrainsSource(root)
    files = src.files()
    assert src.label == "mrbrains18"
    assert [f.volume for f in files] == ["070", "1", "14", "148", "4", "5", "7"]
    assert all(f.rel.endswith("/pre/reg_T1.nii.gz") for f in files)  # the T1 in FLAIR space, not the native pre/T1
    flair = MRBrainsSource(root, "FLAIR").files()
    assert all(f.rel.endswith("/pre/FLAIR.nii.gz") for f in flair)
    assert MRBrainsSource(root / "training", "IR").files()[0].rel == "070/pre/reg_IR.nii.gz"


def test_mrbrains13_layout(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.mrbrains13_tree(tmp_path / "mrb13")
    src = MRBrainsSource(root, "FLAIR")
    files = src.files()
    assert src.label == "mrbrains13"
    assert [f.rel for f in files][:2] == ["TrainingData/1/T2_FLAIR.nii", "TrainingData/2/T2_FLAIR.nii"]
    assert [f.rel for f in MRBrainsSource(root).files()][0] == "TrainingData/1/T1.nii"


def test_mrbrains_errors(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.mrbrains18_tree(tmp_path / "mrb18", ids=("1", "2"))
    (root / "training/2/pre/reg_T1.nii.gz").unlink()
    with pytest.raises(SftkdError, match=r"training/2: pre/reg_T1.nii.gz \(or .nii\) not found"):
        MRBrainsSource(root).files()
    with pytest.raises(SftkdError, match="--modality T2: expected one of T1, FLAIR, IR"):
        MRBrainsSource(root, "T2")
    (tmp_path / "other").mkdir()
    with pytest.raises(SftkdError, match="no MRBrainS subjects found"):
        MRBrainsSource(tmp_path / "other").files()


# ----------------------------------------------------------------- NIfTI folders


def test_volume_id() -> None:
    assert volume_id("sub-01/anat/T1w.nii.gz") == "sub-01_anat_T1w"
    assert volume_id("a b/c(1).nii") == "a_b_c_1"


@pytest.mark.parametrize("source", ["nifti", "fastmri", "acdc", "mrbrains"])
def test_a_dangling_link_is_refused_naming_it(tmp_path: Path, nifti_writer, source) -> None:
    """A link into a drive that is not mounted: refused, naming the link and its target, not
    skipped (a subset prepared without a word)."""
    from fastmri_files import write_singlecoil

    target = tmp_path / "unmounted" / "scan"
    if source == "nifti":
        nifti_writer.write(tmp_path / "raw" / "a.nii.gz", nifti_writer.phantom())
        link, make = tmp_path / "raw" / "b.nii.gz", lambda: NiftiSource(tmp_path / "raw")
    elif source == "fastmri":
        write_singlecoil(tmp_path / "raw" / "singlecoil_train" / "file1.h5")
        link, make = tmp_path / "raw" / "singlecoil_train" / "file2.h5", lambda: FastMRISource(tmp_path / "raw")
    elif source == "acdc":
        nifti_writer.acdc_tree(tmp_path / "raw", training=(1, 2))
        (tmp_path / "raw/training/patient002/Info.cfg").unlink()
        link, make = tmp_path / "raw/training/patient002/patient002_frame05.nii.gz", lambda: AcdcSource(tmp_path / "raw")
    else:
        nifti_writer.mrbrains18_tree(tmp_path / "raw", ids=("1", "2"))
        (tmp_path / "raw/training/2/pre/reg_T1.nii.gz").unlink()
        link, make = tmp_path / "raw/training/2/pre/reg_T1.nii.gz", lambda: MRBrainsSource(tmp_path / "raw")
    link.symlink_to(target)
    with pytest.raises(SftkdError, match=rf"^{re.escape(str(link))}: a symbolic link to {re.escape(str(target))}, "
                                         "which cannot be reached"):
        make().files()


def test_bids_subject() -> None:
    assert bids_subject("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz") == "sub-01"
    assert bids_subject("derivatives/sub-A2/anat/T1w.nii.gz") == "sub-A2"
    assert bids_subject("sub-07_ses-2_T1w.nii.gz") == bids_subject("sub-07.nii") == "sub-07"
    assert bids_subject("scans/subject-01_T1w.nii.gz") is None and bids_subject("sub-01_x/a.nii") is None


def test_nifti_pattern_recursive_and_errors(tmp_path: Path, nifti_writer) -> None:
    root = tmp_path / "raw"
    nifti_writer.write(root / "a.nii.gz", nifti_writer.phantom())
    nifti_writer.write(root / "deep/er/b.nii.gz", nifti_writer.phantom())
    nifti_writer.write(root / "c.nii", nifti_writer.phantom())
    assert [f.volume for f in NiftiSource(root).files()] == ["a", "deep_er_b"]
    assert [f.volume for f in NiftiSource(root, "*.nii").files()] == ["c"]
    assert [f.volume for f in NiftiSource(root, "deep/*/*.nii.gz").files()] == ["deep_er_b"]
    with pytest.raises(SftkdError, match=r"raw: no files match --pattern '\*.mgz'"):
        NiftiSource(root, "*.mgz").files()
    nifti_writer.write(root / "deep_er/b.nii.gz", nifti_writer.phantom())
    with pytest.raises(SftkdError, match="volume id 'deep_er_b' is also the id of"):
        NiftiSource(root).files()
    with pytest.raises(SftkdError, match="--pattern"):
        NiftiSource(root, "../*.nii.gz")
