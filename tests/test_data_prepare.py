"""`prepare_dataset` end to end on tiny trees in the exact ACDC / MRBrainS18 / MRBrainS13 layouts,
the demo templates, the h5 content against numpy oracles, idempotence, atomicity and input safety."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from sftkd_cli.data import manifest as manifest_mod
from sftkd_cli.data import prepare as prep_mod
from sftkd_cli.data.format import acceleration_key
from sftkd_cli.data.options import PrepareOptions, parse_accelerations, parse_mask_files
from sftkd_cli.data.prepare import prepare_dataset
from sftkd_cli.data.sources import AcdcSource, DemoSource, MRBrainsSource, NiftiSource
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import sha256_file

SMALL = PrepareOptions(size=(16, 16))


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file under root."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    """Temporary or backup folders left next to an output folder."""
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name] if parent.exists() else []


def oracle_kspace(image: np.ndarray, mask: np.ndarray, centered: bool) -> np.ndarray:
    """Independent k-space: unnormalised numpy FFT / sqrt(H*W), explicit shifts, times the mask."""
    h, w = image.shape[-2:]
    x = np.fft.ifftshift(image, axes=(-2, -1)) if centered else image
    k = np.fft.fft2(x.astype(np.float64), axes=(-2, -1)) / np.sqrt(h * w)
    k = np.fft.fftshift(k, axes=(-2, -1)) if centered else k
    return k * mask


def oracle_zf(kspace: np.ndarray, centered: bool) -> np.ndarray:
    h, w = kspace.shape[-2:]
    k = np.fft.ifftshift(kspace, axes=(-2, -1)) if centered else kspace
    x = np.fft.ifft2(k, axes=(-2, -1)) * np.sqrt(h * w)
    x = np.fft.fftshift(x, axes=(-2, -1)) if centered else x
    return np.abs(x)


def centre(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop (only) of the last two axes, by hand."""
    h, w = stack.shape[-2:]
    r, c = (h - size[0]) // 2, (w - size[1]) // 2
    return stack[..., r : r + size[0], c : c + size[1]]


# ----------------------------------------------------------------- ACDC


def test_acdc_layout_h5_and_manifest(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1, 2, 3), testing=(101,))
    result = prepare_dataset(AcdcSource(root), tmp_path / "out", SMALL)
    out = tmp_path / "out"
    assert not result.unchanged
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    volumes = ["patient001_frame01", "patient001_frame11", "patient002_frame01", "patient002_frame12",
               "patient003_frame01", "patient003_frame13", "patient101_frame01", "patient101_frame111"]
    assert names == sorted([f"{v}.h5" for v in volumes] + ["manifest.json", "masks/acc4.npy", "masks/acc5.npy"])

    m = json.loads((out / "manifest.json").read_text())
    assert m == result.manifest
    assert m["format"] == 1 and m["source"] == "acdc" and m["image_size"] == [16, 16]
    assert m["accelerations"] == [4.0, 5.0]
    assert m["splits"]["val"] == ["patient101_frame01", "patient101_frame111"]  # testing/ -> val
    assert len(m["splits"]["train"]) == 6 and m["splits"]["test"] == []
    assert m["slices"] == {"train": 24, "val": 8, "test": 0}
    assert m["mask"]["files"] == {"acc4": "masks/acc4.npy", "acc5": "masks/acc5.npy"}
    assert m["mask"]["per_acceleration"]["acc4"]["lines"] == 4  # round(16 / 4)
    assert m["options"]["size"] == [16, 16] and m["options"]["seed"] == 42
    for vid, entry in m["volumes"].items():
        src = root / entry["source_file"]
        assert "_gt" not in src.name and "_4d" not in src.name
        assert entry["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert entry["slices"] == 4 and entry["file"] == f"{vid}.h5"

    with h5py.File(out / "patient002_frame12.h5", "r") as f:
        assert set(f.keys()) == {"image", "source_slice", "acc4", "acc5"}
        assert set(f["acc4"].keys()) == {"kspace", "zf", "mask"}
        assert f["image"].shape == (4, 16, 16) and f["image"].dtype == np.float32
        assert f["acc5/kspace"].dtype == np.complex64 and f["acc5/zf"].dtype == np.float32
        assert f["acc5/mask"].shape == (16, 16) and f["acc5/mask"].dtype == np.float32
        # only filters every HDF5 build has (deflate), so MATLAB, h5dump and C readers decode it
        f.visititems(lambda name, obj: isinstance(obj, h5py.Dataset) and obj.compression not in (None, "gzip")
                     and pytest.fail(f"{name}: {obj.compression} compression"))
        assert f.attrs["split"] == "train" and f.attrs["volume"] == "patient002_frame12"
        assert f.attrs["source"] == "acdc"
        assert f.attrs["source_file"] == "training/patient002/patient002_frame12.nii.gz"
        np.testing.assert_allclose(f.attrs["voxel_size"], [1.0, 1.0, 1.0])
        raw = nifti_writer.phantom((20, 18, 4), seed=2 + 12)
        assert f.attrs["max"] == pytest.approx(raw.max())
        expected = centre(np.moveaxis(raw / raw.max(), 2, 0), (16, 16))  # 20x18 -> 16x16
        np.testing.assert_allclose(f["image"][()], expected, rtol=1e-6)
        np.testing.assert_array_equal(f["source_slice"][()], [0, 1, 2, 3])


def test_acdc_val_fraction_splits_by_patient_and_testing_becomes_test(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1, 2, 3, 4), testing=(101,))
    opts = PrepareOptions(size=(16, 16), val_fraction=0.5, accelerations=(4.0,))
    m = prepare_dataset(AcdcSource(root), tmp_path / "out", opts).manifest
    patients = {s: {v.split("_")[0] for v in m["splits"][s]} for s in ("train", "val", "test")}
    assert patients["test"] == {"patient101"}
    assert len(patients["train"]) == 2 and len(patients["val"]) == 2
    assert not (patients["train"] & patients["val"])
    for s, ids in m["splits"].items():  # both frames of a patient in one split
        assert len(ids) == 2 * len(patients[s])


def test_acdc_without_testing_is_split_seeded(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1, 2, 3, 4))
    m = prepare_dataset(AcdcSource(root), tmp_path / "out", PrepareOptions(size=(16, 16), accelerations=(4.0,))).manifest
    assert len(m["splits"]["val"]) == 2 and len(m["splits"]["train"]) == 6  # 1 of 4 patients


# ----------------------------------------------------------------- MRBrainS


def test_mrbrains18_five_train_two_val(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.mrbrains18_tree(tmp_path / "mrb")
    m = prepare_dataset(MRBrainsSource(root), tmp_path / "out", SMALL).manifest
    assert m["source"] == "mrbrains18"
    assert len(m["splits"]["train"]) == 5 and len(m["splits"]["val"]) == 2
    assert not set(m["splits"]["train"]) & set(m["splits"]["val"])
    assert all(v["source_file"].endswith("pre/reg_T1.nii.gz") for v in m["volumes"].values())
    assert m["slices"]["val"] == 8


def test_mrbrains13_explicit_val(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.mrbrains13_tree(tmp_path / "mrb13")
    opts = PrepareOptions(size=(16, 16), val=("2",), test=("5",), accelerations=(4.0,))
    m = prepare_dataset(MRBrainsSource(root), tmp_path / "out", opts).manifest
    assert m["source"] == "mrbrains13"
    assert m["splits"] == {"train": ["1", "3", "4"], "val": ["2"], "test": ["5"]}
    assert m["volumes"]["2"]["source_file"] == "TrainingData/2/T1.nii"


# ----------------------------------------------------------------- h5 content against oracles


@pytest.mark.parametrize("layout, kind", [("corner", "random"), ("centered", "equispaced")])
def test_kspace_and_zf_match_numpy_oracle(tmp_path: Path, nifti_writer, layout: str, kind: str) -> None:
    nifti_writer.write(tmp_path / "raw/a.nii.gz", nifti_writer.phantom((20, 18, 3)))
    opts = PrepareOptions(size=(15, 16), accelerations=(4.0, 2.5), mask_layout=layout, mask_kind=kind)
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts)
    with h5py.File(tmp_path / "out/a.h5", "r") as f:
        image = f["image"][()]
        assert image.shape == (3, 15, 16) and 0 <= image.min() and image.max() <= 1
        for acc in (4.0, 2.5):
            g = f[acceleration_key(acc)]
            mask = g["mask"][()]
            assert np.all(mask == mask[:, :1])  # whole rows
            assert int(mask[:, 0].sum()) == round(15 / acc)
            np.testing.assert_array_equal(mask, np.load(tmp_path / f"out/masks/{acceleration_key(acc)}.npy"))
            k = oracle_kspace(image, mask, layout == "centered")
            np.testing.assert_allclose(g["kspace"][()], k, atol=1e-5)
            np.testing.assert_allclose(g["zf"][()], oracle_zf(g["kspace"][()], layout == "centered"), atol=1e-5)
    assert set(h5py.File(tmp_path / "out/a.h5", "r").keys()) == {"image", "source_slice", "acc4", "acc2.5"}


def test_nifti_bids_sessions_split_by_subject(tmp_path: Path, nifti_writer) -> None:
    """4 subjects x 2 sessions: each subject's sessions go to one split (never train and val), and
    --val names subjects; a file name's sub-<label>_ prefix counts as its subject too."""
    for i in range(1, 5):
        for ses in (1, 2):
            rel = f"sub-0{i}/ses-{ses}/anat/sub-0{i}_ses-{ses}_T1w.nii.gz"
            nifti_writer.write(tmp_path / "raw" / rel, nifti_writer.phantom((16, 16, 2), seed=10 * i + ses))

    def subjects(splits: dict[str, list[str]]) -> dict[str, set[str]]:
        return {name: {volume.split("_")[0] for volume in volumes} for name, volumes in splits.items()}

    opts = PrepareOptions(size=(16, 16), accelerations=(4.0,), val_fraction=0.5)
    m = prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts).manifest
    by_split = subjects(m["splits"])
    assert len(by_split["train"]) == 2 and len(by_split["val"]) == 2 and not by_split["train"] & by_split["val"]
    assert len(m["splits"]["train"]) == len(m["splits"]["val"]) == 4
    opts = PrepareOptions(size=(16, 16), accelerations=(4.0,), val=("sub-02",), test=("sub-04",))
    m = prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "named", opts).manifest
    assert subjects(m["splits"]) == {"train": {"sub-01", "sub-03"}, "val": {"sub-02"}, "test": {"sub-04"}}
    assert len(m["splits"]["val"]) == 2


def test_a_bids_dataset_split_file_by_file_before_is_not_up_to_date(tmp_path: Path, nifti_writer) -> None:
    """A BIDS dataset prepared when sessions were split file by file (its record has no groups) is
    prepared differently, so a re-run does not call its leaky split up to date; a non-BIDS one
    records no groups, so its datasets stay up to date."""
    from sftkd_cli.data.output import DatasetDiffers

    for i in (1, 2):
        for ses in (1, 2):
            nifti_writer.write(tmp_path / f"raw/sub-0{i}_ses-{ses}_T1w.nii.gz", nifti_writer.phantom((16, 16, 2), seed=i + ses))
    opts = PrepareOptions(size=(16, 16), accelerations=(4.0,), val_fraction=0.5)
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts)
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["inputs"]["groups"]["sub-01_ses-2_T1w.nii.gz"] == "sub-01"
    del manifest["inputs"]["groups"]
    (tmp_path / "out/manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetDiffers, match=r"prepared differently: the files are grouped for the split otherwise \(BIDS"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts)
    nifti_writer.write(tmp_path / "plain/a.nii.gz", nifti_writer.phantom((16, 16, 2), seed=1))
    nifti_writer.write(tmp_path / "plain/b.nii.gz", nifti_writer.phantom((16, 16, 2), seed=2))
    prepare_dataset(NiftiSource(tmp_path / "plain"), tmp_path / "plain-out", opts)
    assert "groups" not in json.loads((tmp_path / "plain-out/manifest.json").read_text())["inputs"]


@pytest.mark.parametrize("shape, downsample", [((1, 12, 5), 1), ((2, 3, 6), 1), ((12, 13, 2), 2)])
def test_slices_below_the_least_size_are_refused_naming_the_file(tmp_path: Path, nifti_writer, shape, downsample) -> None:
    """Slices smaller than training takes (1 x N, 2 x 3, or 12 x 13 downsampled to 6 x 6) are refused
    as the file is read, naming it, not at the mask step ('too high for 1 lines', no file named);
    --size pads them to a size training takes."""
    nifti_writer.write(tmp_path / "raw/tiny.nii.gz", np.random.default_rng(0).random(shape, dtype=np.float32) + 0.5)
    h, w = shape[0] // downsample, shape[1] // downsample
    after = f" after --downsample {downsample}" if downsample > 1 else ""
    expected = (rf"raw/tiny.nii.gz: image of shape \({shape[0]}, {shape[1]}, {shape[2]}\) has slices of "
                rf"{h}x{w} along axis 2{after}; expected slices of at least 7x7")
    with pytest.raises(SftkdError, match=expected):
        prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", PrepareOptions(downsample=downsample, accelerations=(4.0,)))
    assert not (tmp_path / "out").exists()
    padded = PrepareOptions(size=(16, 16), downsample=downsample, accelerations=(4.0,))
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", padded).manifest["image_size"] == [16, 16]


def test_native_size_downsample_and_slice_skipping(tmp_path: Path, nifti_writer) -> None:
    data = nifti_writer.phantom((20, 18, 5))
    data[:, :, 0] = 0.0  # an empty slice is always dropped
    data[:, :, 4] *= 0.05  # a dark slice is dropped with --min-slice-mean
    nifti_writer.write(tmp_path / "raw/a.nii.gz", data, zooms=(1.5, 1.25, 4.0))
    opts = PrepareOptions(downsample=2, min_slice_mean=0.3, accelerations=(4.0,))
    m = prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts).manifest
    assert m["image_size"] == [10, 9]
    with h5py.File(tmp_path / "out/a.h5", "r") as f:
        np.testing.assert_array_equal(f["source_slice"][()], [1, 2, 3])
        np.testing.assert_allclose(f.attrs["voxel_size"], [4.0, 3.0, 2.5])
        vol = np.moveaxis(data / data.max(), 2, 0)[1:4]
        blocks = vol.reshape(3, 10, 2, 9, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(f["image"][()], blocks, rtol=1e-5)


def test_slice_axis_and_padding(tmp_path: Path, nifti_writer) -> None:
    data = nifti_writer.phantom((6, 5, 4))
    nifti_writer.write(tmp_path / "raw/a.nii.gz", data)
    opts = PrepareOptions(size=(8, 7), slice_axis=0, accelerations=(2.0,))
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts)
    with h5py.File(tmp_path / "out/a.h5", "r") as f:
        image = f["image"][()]
    kept = [i for i in range(6) if data[i].any()]
    expected = np.pad(data[kept] / data.max(), ((0, 0), (1, 2), (1, 2)))  # 5x4 -> 8x7
    np.testing.assert_allclose(image, expected, rtol=1e-6)


def test_user_mask_file_is_used_and_copied(tmp_path: Path, nifti_writer) -> None:
    nifti_writer.write(tmp_path / "raw/a.nii.gz", nifti_writer.phantom((16, 16, 2)))
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[[0, 1, 5, 9, 15], :] = 1
    np.save(tmp_path / "m4.npy", mask)
    opts = PrepareOptions(accelerations=(4.0, 5.0), mask_files={4.0: tmp_path / "m4.npy"})
    m = prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts).manifest
    np.testing.assert_array_equal(np.load(tmp_path / "out/masks/acc4.npy"), mask)
    info = m["mask"]["per_acceleration"]
    assert info["acc4"]["origin"] == "file" and info["acc4"]["lines"] == 5
    assert info["acc4"]["source_sha256"] == hashlib.sha256((tmp_path / "m4.npy").read_bytes()).hexdigest()
    assert info["acc5"]["origin"] == "random"
    with h5py.File(tmp_path / "out/a.h5", "r") as f:
        np.testing.assert_array_equal(f["acc4/mask"][()], mask)


def test_user_mask_axis_is_read_from_the_mask(tmp_path: Path, nifti_writer) -> None:
    """A user's mask of whole columns is recorded as axis 1 with its column count (not as rows, all
    16 of them); a 2-D pattern as no axis; a mix with generated row masks per acceleration."""
    from scipy.io import savemat

    from cli_helpers import sftkd

    nifti_writer.write(tmp_path / "raw/a.nii.gz", nifti_writer.phantom((16, 16, 2)))
    columns = np.zeros((16, 16), dtype=np.float32)
    columns[:, [0, 7, 8, 12]] = 1
    np.save(tmp_path / "cols.npy", columns)
    pattern = (np.random.default_rng(0).random((16, 16)) < 0.25).astype(np.float64)
    pattern[0, 0] = 1  # k-space's DC (corner layout), which every user mask must sample
    savemat(tmp_path / "pattern.mat", {"mask": pattern})
    result = sftkd("prepare-data", "nifti", tmp_path / "raw", "--out", tmp_path / "c", "--acc", "4",
                   "--mask-file", f"4={tmp_path / 'cols.npy'}")
    m = json.loads((tmp_path / "c/manifest.json").read_text())["mask"]
    assert m["axis"] == 1 and m["per_acceleration"]["acc4"]["axis"] == 1 and m["per_acceleration"]["acc4"]["lines"] == 4
    assert "4x: 4/16 lines (file)" in result.stdout and "columns sampled (axis 1)" in result.stdout
    opts = PrepareOptions(accelerations=(4.0,), mask_files={4.0: tmp_path / "pattern.mat"})
    m = prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "p", opts).manifest["mask"]
    entry = m["per_acceleration"]["acc4"]
    assert m["axis"] is None and entry["axis"] is None and entry["lines"] is None
    assert entry["sampled_fraction"] == round(float(pattern.mean()), 6)
    result = sftkd("prepare-data", "nifti", tmp_path / "raw", "--out", tmp_path / "mix", "--acc", "4,5",
                   "--mask-file", f"4={tmp_path / 'cols.npy'}")
    m = json.loads((tmp_path / "mix/manifest.json").read_text())["mask"]
    assert m["axis"] is None and m["per_acceleration"]["acc4"]["axis"] == 1 and m["per_acceleration"]["acc5"]["axis"] == 0
    text = " ".join(result.stdout.split())
    assert "4x: 4/16 columns (file)" in text and "5x: 3/16 rows (random)" in text


def test_parse_accelerations_and_mask_files() -> None:
    assert parse_accelerations(["4,5", "2.5"]) == (4.0, 5.0, 2.5)
    assert parse_accelerations(None) == ()
    with pytest.raises(SftkdError, match="--acc x"):
        parse_accelerations(["x"])
    assert parse_mask_files(["4=a.npy", "5 = b.npy"], (4.0, 5.0)) == {4.0: Path("a.npy"), 5.0: Path("b.npy")}
    assert parse_mask_files(["a.npy"], (4.0,)) == {4.0: Path("a.npy")}
    with pytest.raises(SftkdError, match="a bare path needs exactly one --acc"):
        parse_mask_files(["a.npy"], (4.0, 5.0))
    with pytest.raises(SftkdError, match="acceleration 4 already has a mask file"):
        parse_mask_files(["4=a.npy", "4=b.npy"], (4.0,))


# ----------------------------------------------------------------- demo


@pytest.mark.nilearn  # the demo template ships in nilearn (optional: sftkd[demo])
def test_demo_icbm152_real_template(tmp_path: Path) -> None:
    opts = PrepareOptions(size=(96, 96), downsample=2, min_slice_mean=0.3)
    m = prepare_dataset(DemoSource(), tmp_path / "demo", opts).manifest
    assert m["source"] == "demo/icbm152" and m["image_size"] == [96, 96]
    assert m["source_details"]["file"].endswith("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    assert all(m["splits"][s] for s in ("train", "val", "test"))
    assert m["slices"]["train"] > m["slices"]["val"] > 0
    ranges = {s: [] for s in m["splits"]}
    for vid, entry in m["volumes"].items():
        with h5py.File(tmp_path / "demo" / entry["file"], "r") as f:
            idx = f["source_slice"][()]
            assert f["image"].shape == (len(idx), 96, 96) and f["image"][()].max() <= 1.0
            assert f.attrs["max"] == 255.0
        ranges[entry["split"]].append(idx)
    # never adjacent slices across splits: every pair from different splits is >= 2 apart
    for a in ("train", "val", "test"):
        for b in ("train", "val", "test"):
            if a < b:
                sa, sb = np.concatenate(ranges[a]), np.concatenate(ranges[b])
                assert np.abs(sa[:, None] - sb[None, :]).min() >= 3  # gap of 2 slices


def test_demo_colin27_with_explicit_path(tmp_path: Path, nifti_writer) -> None:
    ch2 = nifti_writer.write(tmp_path / "mricron/templates/ch2.nii.gz", nifti_writer.phantom((30, 36, 40)))
    src = DemoSource("colin27", ch2, slab=4, gap=1)
    opts = PrepareOptions(size=(16, 16), downsample=2, accelerations=(4.0,))
    m = prepare_dataset(src, tmp_path / "demo", opts).manifest
    assert m["source"] == "demo/colin27" and m["source_details"]["template"] == "colin27"
    assert m["options"]["template_path"] == str(ch2.resolve())
    assert list(m["volumes"])[0] == "colin27_z000-003"
    assert sum(m["slices"].values()) == 32  # 40 slices: 8 slabs of 4 with 1-slice gaps
    assert m["volumes"]["colin27_z000-003"]["source_sha256"] == hashlib.sha256(ch2.read_bytes()).hexdigest()


def test_demo_orientation_anterior_at_top(tmp_path: Path, nifti_writer) -> None:
    data = np.zeros((8, 10, 6), dtype=np.float32)  # (x R, y A, z S), identity affine = RAS
    data[:, 7:, :] = 1.0  # anterior half bright
    data[:, :7, :] = 0.2
    path = nifti_writer.write(tmp_path / "t.nii.gz", data)
    opts = PrepareOptions(accelerations=(2.0,))
    prepare_dataset(DemoSource("colin27", path, slab=2, gap=1), tmp_path / "o", opts)
    with h5py.File(tmp_path / "o/colin27_z000-001.h5", "r") as f:
        image = f["image"][0]
    assert image.shape == (10, 8)  # rows = y, columns = x
    assert np.all(image[:3] == 1.0) and np.all(image[3:] == pytest.approx(0.2))


# ----------------------------------------------------------------- idempotence, force, atomicity, safety


def test_rerun_is_noop_force_rebuilds_and_other_args_refused(tmp_path: Path, nifti_writer) -> None:
    for i in range(3):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    out = tmp_path / "out"
    first = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    before = tree_state(out)
    second = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert second.unchanged and second.manifest == first.manifest
    assert tree_state(out) == before  # same bytes and same mtimes

    with pytest.raises(SftkdError, match=r"out: existing dataset prepared differently: size \[16, 16\] -> \[12, 12\]; pass --force"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(12, 12)))
    assert tree_state(out) == before

    forced = prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(16, 16), force=True))
    assert not forced.unchanged and forced.manifest == first.manifest  # deterministic content
    after = tree_state(out)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert leftovers(tmp_path) == []

    nifti_writer.write(tmp_path / "raw/v1.nii.gz", nifti_writer.phantom((20, 18, 3), seed=9))
    with pytest.raises(SftkdError, match=r"source files changed: v1.nii.gz"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)


def backdate(root: Path) -> None:
    """Set every file under `root` an hour back (files changed seconds ago are never recorded)."""
    then = time.time_ns() - 3600 * 10**9
    for path in root.rglob("*"):
        os.utime(path, ns=(then, then))


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files prepare-data hashes (reads whole) from now on."""
    hashed: list[str] = []

    def counting(path: Path, *args: object) -> str:
        hashed.append(Path(path).name)
        return sha256_file(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest_mod, "sha256_file", counting)
    return hashed


def test_an_up_to_date_rerun_reads_no_input(tmp_path: Path, nifti_writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each input's sha256 is recorded with its size and mtime beside the dataset: a re-run hashes
    only the files whose size or mtime changed; the manifest (the fingerprint) is as before."""
    for i in range(3):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    backdate(tmp_path / "raw")
    out = tmp_path / "out"
    hashed = count_hashing(monkeypatch)
    first = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert sorted(hashed) == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    before = tree_state(out)

    hashed.clear()
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged
    assert hashed == [] and tree_state(out) == before
    record = json.loads((tmp_path / ".out.hashes.json").read_text())
    v1 = tmp_path / "raw/v1.nii.gz"
    assert record[str(v1.absolute())] == {"size": v1.stat().st_size, "mtime_ns": v1.stat().st_mtime_ns,
                                          "sha256": hashlib.sha256(v1.read_bytes()).hexdigest()}
    assert "mtime_ns" not in (out / "manifest.json").read_text()

    os.utime(v1, ns=(v1.stat().st_atime_ns, v1.stat().st_mtime_ns + 10**9))  # touched: same size and bytes
    again = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert again.unchanged and again.manifest == first.manifest and hashed == ["v1.nii.gz"]
    hashed.clear()
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged and hashed == []  # recorded anew

    data = bytearray(v1.read_bytes())  # one byte changed, same size, a new mtime: seen
    data[-1] ^= 0xFF
    v1.write_bytes(bytes(data))
    os.utime(v1, ns=(v1.stat().st_atime_ns, v1.stat().st_mtime_ns - 60 * 10**9))
    with pytest.raises(SftkdError, match=r"source files changed: v1.nii.gz"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)


def test_hashes_are_taken_afresh_without_a_record_with_force_or_for_recent_files(
        tmp_path: Path, nifti_writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset prepared before the record (or with an unreadable one) is hashed as before, and
    recorded then; --force hashes every input; a file changed seconds ago is not recorded (a later
    change within its time stamp's resolution would go unseen)."""
    for i in range(2):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    out, record = tmp_path / "out", tmp_path / ".out.hashes.json"
    hashed = count_hashing(monkeypatch)
    prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert not record.exists()  # just written: not recorded
    hashed.clear()
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged and len(hashed) == 2

    backdate(tmp_path / "raw")
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged and record.exists()
    for old in (None, "{broken"):  # an older dataset: no record, or one that cannot be read
        record.unlink()
        if old is not None:
            record.write_text(old)
        hashed.clear()
        assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged and len(hashed) == 2
        hashed.clear()
        assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged and hashed == []

    assert not prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(16, 16), force=True)).unchanged
    assert len(hashed) == 2


def test_a_replacement_killed_midway_is_cleared_by_the_next_run(tmp_path: Path, nifti_writer, monkeypatch) -> None:
    """--force replaces the files of an existing dataset one by one, with no manifest meanwhile:
    killed there (kill -9, power cut), the folder held old and new files mixed, which no later
    run would touch ("not a sftkd dataset"). The next run clears sftkd's files and prepares it;
    a file of the user's in the folder stays."""
    from sftkd_cli.data import output

    for i in range(3):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    out = tmp_path / "out"
    prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    (out / "notes.txt").write_text("mine")

    class KilledMidway:  # the process dies at the second file it moves in
        moved = 0

        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, source, target):
            KilledMidway.moved += 1
            if KilledMidway.moved == 2:
                raise SystemExit("killed")
            os.replace(source, target)

    monkeypatch.setattr(output, "os", KilledMidway())
    with pytest.raises(SystemExit):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(12, 12), force=True))
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and (out / output.INSTALL_MARKER).is_file()
    again = prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(12, 12)))
    assert again.manifest["image_size"] == [12, 12] and not (out / output.INSTALL_MARKER).exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("*.h5")) == ["v0.h5", "v1.h5", "v2.h5"]


def test_a_moved_input_folder_with_the_same_files_is_up_to_date(tmp_path: Path, nifti_writer) -> None:
    """ROOT renamed since: the same files (names and sha256) prepare the same dataset, so nothing
    is redone (it asked for --force and a rebuild: 'root "/.../raw" -> "/.../moved"'); a changed
    file in the moved folder still is a change."""
    for i in range(2):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    out = tmp_path / "out"
    first = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    before = tree_state(out)
    (tmp_path / "raw").rename(tmp_path / "moved")
    again = prepare_dataset(NiftiSource(tmp_path / "moved"), out, SMALL)
    assert again.unchanged and again.manifest == first.manifest and tree_state(out) == before
    nifti_writer.write(tmp_path / "moved/v1.nii.gz", nifti_writer.phantom((20, 18, 3), seed=7))
    with pytest.raises(SftkdError, match="prepared differently"):
        prepare_dataset(NiftiSource(tmp_path / "moved"), out, SMALL)


def test_an_up_to_date_dataset_that_cannot_be_written_is_used_as_it_is(tmp_path: Path, nifti_writer, read_only) -> None:
    """The up-to-date check writes nothing and needs no lock: a read-only dataset, even in a folder
    where no lock can be made, is up to date; only preparing it again needs write access."""
    for i in range(2):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    parent = tmp_path / "shared"
    out = parent / "out"
    first = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    before = tree_state(parent)
    read_only(out)
    again = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert again.unchanged and again.manifest == first.manifest and tree_state(parent) == before
    read_only(parent)  # no lock beside it either
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged
    with pytest.raises(SftkdError, match=r"prepared differently: size \[16, 16\] -> \[12, 12\]; pass --force"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(12, 12)))
    with pytest.raises(SftkdError, match=r"--out .*out: folder .*out is not writable"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(12, 12), force=True))
    (tmp_path / "raw/v1.nii.gz").unlink()
    nifti_writer.write(tmp_path / "raw/v1.nii.gz", nifti_writer.phantom((20, 18, 3), seed=7))
    with pytest.raises(SftkdError, match=r"source files changed: v1.nii.gz"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert tree_state(parent) == before and leftovers(parent) == []


def test_a_rerun_with_the_accelerations_in_another_order_is_a_no_op(tmp_path: Path, nifti_writer) -> None:
    nifti_writer.write(tmp_path / "raw/v.nii.gz", nifti_writer.phantom((20, 18, 3)))
    out = tmp_path / "out"
    prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(16, 16), accelerations=(4.0, 5.0)))
    before = tree_state(out)
    again = prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(16, 16), accelerations=(5.0, 4.0)))
    assert again.unchanged and tree_state(out) == before


def test_incomplete_dataset_needs_force(tmp_path: Path, nifti_writer) -> None:
    nifti_writer.write(tmp_path / "raw/v.nii.gz", nifti_writer.phantom())
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", SMALL)
    (tmp_path / "out/v.h5").unlink()
    with pytest.raises(SftkdError, match=r"incomplete \(missing v.h5\); pass --force"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", SMALL)
    assert not prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", PrepareOptions(size=(16, 16), force=True)).unchanged
    assert (tmp_path / "out/v.h5").is_file()
    # an unreadable manifest is not recognisably sftkd's: refused even with --force (it used to
    # make --force delete the whole folder)
    (tmp_path / "out/manifest.json").write_text("{broken")
    for force in (False, True):
        with pytest.raises(SftkdError, match=r"not a sftkd dataset \(not JSON\); nothing there is changed"):
            prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", PrepareOptions(size=(16, 16), force=force))
    assert (tmp_path / "out/manifest.json").read_text() == "{broken"


def test_a_file_cut_short_since_is_not_up_to_date(tmp_path: Path, nifti_writer) -> None:
    """The manifest records each file's size: a volume cut short (a copy that stopped, a full disk)
    is named, not called up to date; --force writes it again. A manifest of an older sftkd, which
    records no sizes, is taken as it is."""
    for i in range(2):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    out = tmp_path / "out"
    first = prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert first.manifest["file_bytes"] == {name: (out / name).stat().st_size for name in ("masks/acc4.npy", "masks/acc5.npy", "v0.h5", "v1.h5")}
    whole = (out / "v1.h5").stat().st_size
    with open(out / "v1.h5", "r+b") as handle:
        handle.truncate(5000)
    with pytest.raises(SftkdError, match=rf"out: existing dataset damaged \(v1.h5 is 5,000 bytes, {whole:,} when it was "
                                         r"written\); pass --force to rebuild it"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert not prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(size=(16, 16), force=True)).unchanged
    assert (out / "v1.h5").stat().st_size == whole
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged
    older = json.loads((out / "manifest.json").read_text())
    del older["file_bytes"]
    (out / "manifest.json").write_text(json.dumps(older))
    with open(out / "v1.h5", "r+b") as handle:
        handle.truncate(5000)
    assert prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).unchanged


def test_the_recorded_sizes_leave_the_fingerprint_as_an_earlier_sftkd_made_it(tmp_path: Path, nifti_writer) -> None:
    """The same data prepared by an sftkd that recorded no sizes, and prepared again with them,
    has one fingerprint: runs trained on either are not refused as trained on other data."""
    from sftkd_cli.data.dataset import dataset_fingerprint

    nifti_writer.write(tmp_path / "raw/v0.nii.gz", nifti_writer.phantom((20, 18, 3)))
    out = tmp_path / "out"
    prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    now = dataset_fingerprint(out)
    older = json.loads((out / "manifest.json").read_text())
    del older["file_bytes"]
    (out / "manifest.json").write_text(json.dumps(older, indent=2) + "\n")  # as the earlier sftkd wrote it
    assert dataset_fingerprint(out) == now
    (out / "manifest.json").write_text(json.dumps({**older, "seed": 7}, indent=2) + "\n")
    assert dataset_fingerprint(out) != now  # anything else still counts


def test_a_stop_says_the_folder_is_as_it_was_only_when_there_was_one(tmp_path: Path, monkeypatch) -> None:
    import signal

    from sftkd_cli.data.output import Signals

    monkeypatch.chdir(tmp_path)
    Path("old").mkdir()
    assert str(Signals(Path("old")).error(signal.SIGTERM)) == "prepare-data stopped by SIGTERM; nothing written, old is as it was"
    assert str(Signals(Path("new")).error(signal.SIGINT)) == "prepare-data stopped by SIGINT; nothing written"


def test_failure_midway_keeps_the_work_done_and_the_old_dataset(tmp_path: Path, nifti_writer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing (a crash, a full disk) leaves no dataset folder, only the partial
    folder beside it, which the same command resumes; a failing --force rebuild keeps the previous
    dataset intact."""
    for i in range(3):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom(seed=i))
    real = prep_mod.write_volume_h5
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(prep_mod, "write_volume_h5", failing)
    out = tmp_path / "new" / "parents" / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL)
    assert not out.exists() and sorted(p.name for p in (out.parent / ".out.partial").glob("*.h5")) == ["v0.h5"]
    monkeypatch.setattr(prep_mod, "write_volume_h5", real)
    assert sorted(prepare_dataset(NiftiSource(tmp_path / "raw"), out, SMALL).manifest["volumes"]) == ["v0", "v1", "v2"]
    assert not (out.parent / ".out.partial").exists()

    # a failing --force rebuild keeps the previous dataset intact
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", SMALL)
    before = tree_state(tmp_path / "out")
    calls.clear()
    monkeypatch.setattr(prep_mod, "write_volume_h5", failing)
    with pytest.raises(RuntimeError):
        prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", PrepareOptions(size=(12, 12), force=True))
    assert tree_state(tmp_path / "out") == before
    assert leftovers(tmp_path) == []


def test_a_file_name_that_is_not_utf8_is_kept_as_readable_text(tmp_path: Path, nifti_writer) -> None:
    """HDF5 attributes must be UTF-8: a name's undecodable bytes are written as \\xNN."""
    root = tmp_path / "raw"
    nifti_writer.write(root / "a.nii.gz", nifti_writer.phantom((20, 18, 4), seed=1))
    odd = os.fsdecode(b"p\xe9.nii.gz")  # Latin-1 bytes, as an old scanner export may name files
    nifti_writer.write(root / odd, nifti_writer.phantom((20, 18, 4), seed=2))
    result = prepare_dataset(NiftiSource(root), tmp_path / "out", PrepareOptions(size=(16, 16), val=("a",)))
    (entry,) = [e for e in result.manifest["volumes"].values() if e["source_file"] != "a.nii.gz"]
    with h5py.File(tmp_path / "out" / entry["file"], "r") as f:
        assert f.attrs["source_file"] == "p\\xe9.nii.gz"
    manifest = (tmp_path / "out" / "manifest.json").read_bytes()
    manifest.decode("utf-8")  # strictly: no lone surrogates (jq, JavaScript, ...)
    assert "\\ud" not in manifest.decode() and entry["source_file"] == "p\\xe9.nii.gz"
    assert prepare_dataset(NiftiSource(root), tmp_path / "out", PrepareOptions(size=(16, 16), val=("a",))).unchanged


def test_inputs_are_never_modified(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "acdc", training=(1, 2), testing=(101,))
    before = tree_state(root)
    prepare_dataset(AcdcSource(root), tmp_path / "out", SMALL)
    prepare_dataset(AcdcSource(root), tmp_path / "out", PrepareOptions(size=(12, 12), force=True))
    assert tree_state(root) == before


# ----------------------------------------------------------------- bad inputs (library): clear error, nothing written


def _nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert leftovers(out.parent) == []


def test_bad_inputs_library(tmp_path: Path, nifti_writer) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    with pytest.raises(SftkdError, match="raw: input folder not found"):
        prepare_dataset(NiftiSource(raw), out, SMALL)
    nifti_writer.write(raw / "good.nii.gz", nifti_writer.phantom())
    with pytest.raises(SftkdError, match=r"no files match --pattern '\*.nii'"):
        prepare_dataset(NiftiSource(raw, "*.nii"), out, SMALL)
    cases = {
        "cine.nii.gz": (np.ones((20, 18, 4, 3), dtype=np.float32), r"cine.nii.gz: 4-D image of shape \(20, 18, 4, 3\)"),
        "zero.nii.gz": (np.zeros((20, 18, 4), dtype=np.float32), r"zero.nii.gz: no positive voxel"),
        "nan.nii.gz": (np.full((20, 18, 4), np.nan, dtype=np.float32), r"nan.nii.gz: 1440 NaN/Inf voxel"),
    }
    for name, (data, message) in cases.items():
        bad = nifti_writer.write(raw / name, data)
        with pytest.raises(SftkdError, match=message):
            prepare_dataset(NiftiSource(raw), out, SMALL)
        bad.unlink()
        _nothing_written(tmp_path, out)
    good = (raw / "good.nii.gz").read_bytes()
    (raw / "trunc.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(SftkdError, match=r"trunc.nii.gz: damaged gzip data"):
        prepare_dataset(NiftiSource(raw), out, SMALL)
    (raw / "trunc.nii.gz").unlink()
    nifti_writer.write(raw / "other.nii.gz", nifti_writer.phantom((22, 18, 4)))
    with pytest.raises(SftkdError, match="different in-plane sizes.*pass --size H W"):
        prepare_dataset(NiftiSource(raw), out, PrepareOptions())
    _nothing_written(tmp_path, out)


def test_mask_shape_mismatch_names_file(tmp_path: Path, nifti_writer) -> None:
    nifti_writer.write(tmp_path / "raw/a.nii.gz", nifti_writer.phantom())
    mask = np.zeros((150, 150), dtype=np.float32)
    mask[::4] = 1
    np.save(tmp_path / "mask.npy", mask)
    opts = PrepareOptions(size=(16, 16), accelerations=(4.0,), mask_files={4.0: tmp_path / "mask.npy"})
    with pytest.raises(SftkdError, match=r"mask.npy: shape \(150, 150\), expected \(16, 16\) to match the images"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts)
    native = PrepareOptions(accelerations=(4.0,), mask_files={4.0: tmp_path / "mask.npy"})
    with pytest.raises(SftkdError, match=r"expected \(20, 18\) to match the images"):
        prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", native)
    _nothing_written(tmp_path, tmp_path / "out")


def test_output_folder_checks(tmp_path: Path, nifti_writer) -> None:
    raw = tmp_path / "raw"
    nifti_writer.write(raw / "a.nii.gz", nifti_writer.phantom())
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SftkdError, match="file.txt: is a file; expected a folder"):
        prepare_dataset(NiftiSource(raw), tmp_path / "file.txt", SMALL)
    with pytest.raises(SftkdError, match="inside the input folder"):
        prepare_dataset(NiftiSource(raw), raw / "prepared", SMALL)
    with pytest.raises(SftkdError, match="inside the input folder"):
        prepare_dataset(NiftiSource(raw), raw, SMALL)
    with pytest.raises(SftkdError, match="contains the input"):
        prepare_dataset(NiftiSource(raw), tmp_path, SMALL)
    with pytest.raises(SftkdError, match="contains the input .*a.nii.gz"):
        prepare_dataset(DemoSource("colin27", raw / "a.nii.gz"), raw, SMALL)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    with pytest.raises(SftkdError, match=r"busy: exists and is not a sftkd dataset"):
        prepare_dataset(NiftiSource(raw), tmp_path / "busy", PrepareOptions(size=(16, 16), force=True))
    assert (tmp_path / "busy/notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    prepare_dataset(NiftiSource(raw), tmp_path / "empty", SMALL)  # an empty folder is fine
    assert (tmp_path / "empty/manifest.json").is_file()


@pytest.mark.parametrize(
    "options, message",
    [
        (PrepareOptions(size=(2, 16)), "--size 2 16:"),
        (PrepareOptions(accelerations=(1.0,)), "--acc 1: expected a number > 1"),
        (PrepareOptions(accelerations=(4.0, 4.0)), "repeated value"),
        (PrepareOptions(mask_kind="spiral"), "--mask-kind spiral"),
        (PrepareOptions(mask_layout="middle"), "--mask-layout middle"),
        (PrepareOptions(slice_axis=3), "--slice-axis 3"),
        (PrepareOptions(min_slice_mean=1.5), "--min-slice-mean 1.5"),
        (PrepareOptions(accelerations=(4.0,), mask_files={5.0: Path("m.npy")}), "acceleration 5 is not among --acc 4"),
    ],
)
def test_option_validation(tmp_path: Path, options: PrepareOptions, message: str) -> None:
    with pytest.raises(SftkdError, match=message):
        prepare_dataset(NiftiSource(tmp_path), tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_keep_in_memory_limit_rereads(tmp_path: Path, nifti_writer, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(2):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom(seed=i))
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "a", SMALL)
    monkeypatch.setattr(prep_mod, "KEEP_IN_MEMORY_BYTES", 0)
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "b", SMALL)
    for name in ("v0.h5", "v1.h5"):
        with h5py.File(tmp_path / "a" / name) as fa, h5py.File(tmp_path / "b" / name) as fb:
            np.testing.assert_array_equal(fa["image"][()], fb["image"][()])
    assert sorted(os.listdir(tmp_path / "a")) == sorted(os.listdir(tmp_path / "b"))


# ----------------------------------------------------------------- the source catalog and the acquisition record


def test_manifest_records_the_acquisition(tmp_path: Path, nifti_writer) -> None:
    from sftkd_cli.acquisition import Acquisition

    nifti_writer.write(tmp_path / "raw/a.nii.gz", nifti_writer.phantom((20, 18, 3)))
    opts = PrepareOptions(size=(16, 12), accelerations=(4.0,), mask_layout="centered")
    m = prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts).manifest
    assert m["acquisition"] == {"task": "recon", "kspace_layout": "centered", "values": "magnitude",
                                "channels": 1, "image_size": [16, 12]}
    written = json.loads((tmp_path / "out/manifest.json").read_text())
    assert Acquisition.from_record(written["acquisition"]) == Acquisition("recon", "centered", image_size=(16, 12))


def test_catalog_builds_each_source_with_its_options(tmp_path: Path) -> None:
    from sftkd_cli.data.catalog import SOURCES

    for name, spec in SOURCES.items():
        source = spec.make_source(None if not spec.needs_root else tmp_path, {})
        assert source.name == name
        assert {o.key for o in spec.options} <= set(source.options())
        own = {o.key: o.default for o in spec.options}
        options = spec.prepare_options({"seed": 7, **own})  # the source's own options are ignored here
        assert options.seed == 7 and options.size == spec.defaults["size"]
        assert options.slice_axis == spec.option_default("slice_axis")
    demo = SOURCES["demo"].make_source(None, {"template": "colin27", "slab": "4"})
    assert (demo.template, demo.slab, demo.gap) == ("colin27", 4, 2)
    assert SOURCES["mrbrains"].make_source(tmp_path, {"modality": "FLAIR"}).options()["modality"] == "FLAIR"



def test_prepare_options_refuse_a_key_they_do_not_know():
    """`{"acc": [8]}` (the command's name for accelerations) and `{"bogus": 1}` prepared with the
    defaults without a word; another source's own option is no option of this one either."""
    from sftkd_cli.data.catalog import SOURCES

    demo = SOURCES["demo"]
    with pytest.raises(SftkdError, match=r"^prepare option 'acc': not an option of source demo \(it takes size, .*\); "
                                         r"did you mean accelerations\?$"):
        demo.prepare_options({"acc": [8]})
    for key in ("bogus", "modality"):
        with pytest.raises(SftkdError, match=f"prepare option '{key}': .*accelerations, .*template"):
            demo.prepare_options({key: 1})
    assert demo.prepare_options({"accelerations": [8], "template": "colin27"}).accelerations == (8.0,)


PLAN = "plan.yaml: data.options."


@pytest.mark.parametrize("values, flag, key", [
    ({"template": "colin28"}, "--source colin28: expected one of icbm152, colin27; did you mean colin27?",
     "template: 'colin28': expected one of icbm152, colin27; did you mean colin27?"),
    ({"slab": 0}, "--slab 0: expected an integer >= 1", "slab: 0: expected an integer >= 1"),
    ({"gap": 0}, "--gap 0: expected an integer >= 1", "gap: 0: expected an integer >= 1"),
])
def test_a_source_option_out_of_range_is_named_as_the_user_wrote_it(values, flag, key) -> None:
    """The command names its flag (--source for the template), a plan its data.options key."""
    from sftkd_cli.data.catalog import SOURCES
    from sftkd_cli.data.options import OptionNames

    for name, expected in ((OptionNames(), flag), (OptionNames(PLAN), PLAN + key)):
        with pytest.raises(SftkdError) as info:
            SOURCES["demo"].own_values(values, name)
        assert str(info.value) == expected


@pytest.mark.parametrize("options, message", [
    ({"downsample": 300}, "downsample: 300: too large for slices of 20x18; expected at most 18"),
    ({"val": ["nope"]}, "val: 'nope': not found; expected one of: a, b, c"),
    ({"accelerations": [4], "center_fraction": 0.5},
     "center_fraction: 0.5: its 8 centre lines exceed the 4 of 16 lines sampled at 4x; expected at most 0.2500"),
    ({"accelerations": [4], "center_fraction": 0},
     "center_fraction: 0.0: gives no centre line of 16 (0 x 16 rounds to 0), so the mask could miss k-space's centre "
     "(DC); expected at least 0.0313"),
])
def test_an_option_refused_while_preparing_a_plan_names_its_key(tmp_path: Path, nifti_writer, options, message) -> None:
    """Found only once the volumes are read, yet a plan's error names data.options.<key>, not a flag."""
    from rich.console import Console

    from sftkd_cli.reproduce.data import DataSpec, prepare_data

    for name in "abc":
        nifti_writer.write(tmp_path / f"raw/{name}.nii.gz", nifti_writer.phantom((20, 18, 3)))
    data = DataSpec("nifti", tmp_path / "out", tmp_path / "raw", {"size": [16, 16], **options})
    with pytest.raises(SftkdError) as info:
        prepare_data(data, Path("plan.yaml"), Console(quiet=True))
    assert str(info.value) == PLAN + message


def test_a_plans_dataset_that_differs_says_what_a_plans_user_can_do(tmp_path: Path, nifti_writer) -> None:
    """reproduce has no --force nor --out: a data stage finding its dataset incomplete names the
    plan's data.out and what to do (it said '--out ...: pass --force to rebuild it')."""
    from rich.console import Console

    from sftkd_cli.reproduce.data import DataSpec, prepare_data

    for name in "abc":
        nifti_writer.write(tmp_path / f"raw/{name}.nii.gz", nifti_writer.phantom((20, 18, 3)))
    out = tmp_path / "out"
    data = DataSpec("nifti", out, tmp_path / "raw", {"size": [16, 16]})
    assert prepare_data(data, Path("plan.yaml"), Console(quiet=True))
    (out / "b.h5").unlink()
    with pytest.raises(SftkdError) as info:
        prepare_data(data, Path("plan.yaml"), Console(quiet=True))
    assert str(info.value) == (
        f"plan.yaml: data.out {out}: existing dataset incomplete (missing b.h5); move it away and run the plan again "
        f"(its data stage prepares it anew), or rebuild it with `sftkd prepare-data nifti {tmp_path / 'raw'} --out {out} "
        "--force` and the plan's data.options")


def test_a_plans_slices_downsampled_below_the_size_are_padded_with_a_warning_naming_its_keys(
        tmp_path: Path, nifti_writer) -> None:
    """As prepare-data warns (tests/test_cli_prepare.py), the plan's data stage says so on its console."""
    import io

    from rich.console import Console

    from sftkd_cli.reproduce.data import DataSpec, prepare_data

    ch2 = nifti_writer.write(tmp_path / "ch2.nii.gz", nifti_writer.phantom((30, 36, 24)))
    options = {"template": "colin27", "template_path": str(ch2), "slab": 4, "gap": 1, "size": [16, 16], "downsample": 4}
    console = Console(file=io.StringIO(), width=80)
    assert prepare_data(DataSpec("demo", tmp_path / "out", None, options), Path("plan.yaml"), console)
    assert console.file.getvalue().splitlines()[1] == (
        f"warning: {PLAN}downsample: 4: the slices are 9x7 after downsampling, zero-padded to 16x16 (size [16, 16])")


def test_an_option_error_keeps_its_wording_through_pickling() -> None:
    """A worker's error crosses a process whole (not rebuilt from its message)."""
    import pickle

    from sftkd_cli.data.options import OptionError, OptionNames

    error = OptionError("val", "x", "not found").worded(OptionNames(PLAN))
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) == PLAN + "val: 'x': not found"
    assert str(again.worded(OptionNames())) == "--val x: not found"


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_split_list_and_its_fraction_are_refused_together_when_the_plan_is_read(split: str) -> None:
    from sftkd_cli.reproduce.data import checked_options

    with pytest.raises(SftkdError) as info:
        checked_options("nifti", {split: ["a"], f"{split}_fraction": 0.2}, "plan.yaml: data")
    assert str(info.value) == f"{PLAN}{split} and {split}_fraction: give one or the other, not both"
    with pytest.raises(SftkdError, match=f"^--{split} and --{split}-fraction: give one or the other, not both$"):
        PrepareOptions(**{split: ("a",), f"{split}_fraction": 0.2}).validate()


def _oblique_affine() -> np.ndarray:
    """An oblique, anisotropic, off-centre input affine with a flipped axis (CPU-only helper)."""
    a, b = np.deg2rad(20.0), np.deg2rad(-15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-1.4, 1.4, 10.0])
    affine[:3, 3] = (-50.3, 30.2, 20.7)
    return affine


@pytest.mark.parametrize("factor,size,axis", [(1, (7, 9), 0), (2, (7, 8), 2), (1, (12, 7), 1)])
def test_affine_maps_prepared_pixels_to_their_input_voxels(tmp_path: Path, nifti_writer, factor, size, axis) -> None:
    """CPU: each stored pixel, taken through the file's affine to scanner mm and back through the
    input's own affine, lands on the voxel (or the centre of the downsampled block) it came from."""
    import nibabel as nib

    data = nifti_writer.phantom((8, 10, 7), seed=3).astype(np.float32)
    data[(slice(None),) * axis + (0,)] = 0.0  # a dropped slice: source_slice must still say where the rest are
    source = _oblique_affine()
    (tmp_path / "raw").mkdir()
    nib.save(nib.Nifti1Image(data, source), str(tmp_path / "raw/a.nii.gz"))
    source = nib.load(tmp_path / "raw/a.nii.gz").affine  # as stored (float32 in the header)
    opts = PrepareOptions(size=size, slice_axis=axis, downsample=factor, accelerations=(2.0,))
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", opts)
    with h5py.File(tmp_path / "out/a.h5", "r") as f:
        image, slices, affine, vmax = f["image"][()], f["source_slice"][()], f.attrs["affine"], f.attrs["max"]
    assert 0 not in slices
    to_voxel = np.linalg.inv(source) @ affine
    checked = 0
    for i, s in enumerate(slices):
        for r in range(size[0]):
            for c in range(size[1]):
                ijk = (to_voxel @ [s, r, c, 1.0])[:3]
                lo, hi = np.floor(ijk + 1e-4).astype(int), np.ceil(ijk - 1e-4).astype(int)
                if (lo < 0).any() or (hi >= data.shape).any():
                    assert image[i, r, c] == 0.0  # zero padding lies outside the input
                    continue
                block = data[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
                assert block.size == factor * factor
                assert image[i, r, c] == pytest.approx(float(block.mean()) / vmax, rel=1e-5, abs=1e-7)
                checked += 1
    assert checked > len(slices) * size[0] * size[1] // 3


def test_slice_index_map_follows_each_sources_slicing() -> None:
    """CPU: (slice, row, column) of every source's `slices()` -> the volume index its map names,
    the demo's reversed rows included."""
    volume = np.random.default_rng(0).random((5, 6, 7))
    for cls in (NiftiSource, AcdcSource, MRBrainsSource, DemoSource):
        source = object.__new__(cls)  # slicing reads no instance state
        for axis in range(3):
            stack, index = source.slices(volume, axis), source.slice_index_map(axis, volume.shape)
            for s, r, c in np.ndindex(*stack.shape):
                i, j, k = (index @ [s, r, c, 1])[:3].astype(int)
                assert stack[s, r, c] == volume[i, j, k], (cls.__name__, axis)


def test_different_in_plane_sizes_name_the_odd_file_before_any_data_is_read(tmp_path: Path, nifti_writer,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --size, one volume of another in-plane size is named, grouped by size, from the
    headers: no file's voxels are read first."""
    for i in range(3):
        nifti_writer.write(tmp_path / f"raw/m{i}.nii.gz", nifti_writer.phantom((16, 16, 3), seed=i))
    nifti_writer.write(tmp_path / "raw/m3.nii.gz", nifti_writer.phantom((20, 16, 3), seed=3))

    def no_data(*args):
        raise AssertionError("voxel data read")

    monkeypatch.setattr(prep_mod, "read_volume", no_data)
    with pytest.raises(SftkdError) as failed:
        prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", PrepareOptions())
    assert str(failed.value) == ("volumes have different in-plane sizes: 16x16 (m0.nii.gz and 2 others), 20x16 (m3.nii.gz); "
                                 "expected one size: pass --size H W (e.g. --size 16 16: slices are centre-cropped / "
                                 "zero-padded to it)")
    _nothing_written(tmp_path, tmp_path / "out")
    from sftkd_cli.errors import sizes_listed

    assert sizes_listed([("a", (2, 3)), ("b", (4, 5)), ("c", (4, 5))]) == ("4x5 (b and 1 other), 2x3 (a)", (4, 5))
