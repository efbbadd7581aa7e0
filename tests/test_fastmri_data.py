"""fastMRI single-coil raw k-space: `prepare-data fastmri`, the complex dataset format and its items,
fastMRI masks in the prepared data, per-sample masks, and the refusals (multi-coil, test files).

Device: none (CPU, tiny synthetic files from tests/fastmri_files.py: 40 x 32 k-space, 24 x 24 targets).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from cli_helpers import sftkd
from fastmri_files import center_crop, fft2c, ifft2c, image_of, write_folder, write_multicoil, write_singlecoil
from sftkd_cli.data.catalog import SOURCES
from sftkd_cli.data.dataset import SliceDataset, load_manifest, load_volume, set_dataset_epoch
from sftkd_cli.data.prepare import prepare_dataset
from sftkd_cli.errors import SftkdError
from sftkd_cli.mri.masks import make_mask

torch.set_num_threads(1)


def prepare(root: Path, out: Path, **values):
    """`prepare-data fastmri ROOT --out OUT` with option values as the command takes them."""
    spec = SOURCES["fastmri"]
    return prepare_dataset(spec.make_source(root, values), out, spec.prepare_options(values))


@pytest.fixture(scope="module")
def knee(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw folder, prepared dataset): 4 training files and 2 validation files of 3 slices (read-only)."""
    base = tmp_path_factory.mktemp("fastmri")
    write_folder(base / "raw" / "singlecoil_train", 4)
    write_folder(base / "raw" / "singlecoil_val", 2, prefix="val")
    prepare(base / "raw", base / "data", accelerations=(4.0,))
    return base / "raw", base / "data"


def test_manifest_records_the_complex_acquisition_and_splits_by_folder(knee):
    raw, data = knee
    manifest = load_manifest(data)
    assert manifest["acquisition"] == {"task": "recon", "kspace_layout": "centered", "values": "complex",
                                       "channels": 2, "image_size": [40, 32]}
    assert manifest["image_size"] == [40, 32] and manifest["target_size"] == [24, 24] and manifest["values"] == "complex"
    assert manifest["splits"] == {"train": ["file0000", "file0001", "file0002", "file0003"], "val": ["val0000", "val0001"], "test": []}
    assert manifest["mask"]["kind"] == "fastmri-random" and manifest["mask"]["axis"] == 1 and manifest["mask"]["layout"] == "centered"
    assert manifest["source_details"]["acquisitions"] == {"CORPD_FBK": 3, "CORPDFS_FBK": 3}
    entry = manifest["volumes"]["file0001"]
    with h5py.File(raw / "singlecoil_train" / "file0001.h5", "r") as f:
        raw_k, esc, vmax = f["kspace"][()], f["reconstruction_esc"][()], float(f.attrs["max"])
    assert entry["max"] == vmax and entry["scale"] == 1 / vmax and entry["kspace"] == "raw" and entry["acquisition"] == "CORPDFS_FBK"
    with h5py.File(data / "file0001.h5", "r") as f:
        assert f["kspace"].dtype == np.complex64 and f["kspace"].shape == (3, 40, 32)
        np.testing.assert_allclose(f["kspace"][()] * vmax, raw_k, rtol=1e-6, atol=1e-12)  # the raw k-space, / max
        np.testing.assert_allclose(f["target_mag"][()], esc / vmax, rtol=1e-6)
        assert f.attrs["values"] == "complex" and f.attrs["max"] == vmax
        assert list(f["source_slice"][()]) == [0, 1, 2]
    # the fixed mask is fastMRI's RandomMaskFunc mask for the seed (tests/test_masks.py compares it with fastmri)
    assert np.array_equal(np.load(data / "masks" / "acc4.npy"),
                          make_mask("fastmri-random", (40, 32), 4, seed=42, layout="centered", axis=1))


def test_items_follow_the_contract_and_keep_the_phase(knee):
    raw, data = knee
    for cache in (False, True):
        ds = SliceDataset(data, "train", 4, cache=cache)
        item = ds[4]  # file0001, slice 1
        assert item["volume"] == "file0001" and item["slice"] == 1
        assert item["zf"].shape == item["target"].shape == (2, 40, 32) and item["zf"].dtype == item["target"].dtype == torch.float32
        assert item["kspace"].shape == (1, 40, 32) and item["kspace"].dtype == torch.complex64
        assert item["mask"].shape == (1, 40, 32) and item["mask"].dtype == torch.float32
        assert item["target_mag"].shape == (1, 24, 24) and item["target_mag"].dtype == torch.float32
        with h5py.File(raw / "singlecoil_train" / "file0001.h5", "r") as f:
            vmax, esc = float(f.attrs["max"]), f["reconstruction_esc"][1]
        image = image_of(raw / "singlecoil_train" / "file0001.h5", 1) / vmax
        target = item["target"][0].numpy() + 1j * item["target"][1].numpy()
        np.testing.assert_allclose(target, image, atol=1e-6)  # real and imaginary parts: the phase is kept
        assert np.abs(np.angle(target[20, 16]) - np.angle(image[20, 16])) < 1e-4 and np.abs(target.imag).max() > 0.1
        np.testing.assert_allclose(item["target_mag"][0].numpy(), esc / vmax, rtol=1e-6)
        np.testing.assert_allclose(center_crop(np.abs(target), (24, 24)), item["target_mag"][0].numpy(), atol=1e-6)
        mask = item["mask"][0].numpy()
        assert np.array_equal(mask, ds.mask[0].numpy()) and np.array_equal(mask, np.broadcast_to(mask[0], mask.shape))
        kspace = fft2c(image) * mask
        np.testing.assert_allclose(item["kspace"][0].numpy(), kspace, atol=1e-6)
        zf = ifft2c(kspace)
        np.testing.assert_allclose(item["zf"][0].numpy() + 1j * item["zf"][1].numpy(), zf, atol=1e-6)


def test_workers_and_bounded_cache(knee, monkeypatch):
    _, data = knee
    ds = SliceDataset(data, "val", 4)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2]["zf"], ds[2]["zf"])
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert torch.equal(torch.cat([b["target"] for b in batches]), torch.stack([ds[i]["target"] for i in range(len(ds))]))
    from sftkd_cli.data import dataset as dataset_module

    monkeypatch.setattr(dataset_module, "COMPLEX_CACHE_BYTES", 1000)
    assert SliceDataset(data, "train", 4, cache=True)._cache is None  # too large: read from disk
    volume = load_volume(data, "val0001", 4)
    assert volume["image"].dtype == np.complex64 and volume["image"].shape == (3, 40, 32)
    np.testing.assert_allclose(volume["zf"][2], ds[5]["zf"][0].numpy() + 1j * ds[5]["zf"][1].numpy(), atol=1e-6)


def test_mask_per_sample_is_seeded_by_epoch_volume_and_slice(knee):
    _, data = knee
    ds = SliceDataset(data, "train", 4, mask_per_sample=True)
    first = [ds[i]["mask"] for i in range(len(ds))]
    assert len({m.numpy().tobytes() for m in first}) > 6  # new masks per slice
    ds.set_epoch(1)
    second = [ds[i]["mask"] for i in range(len(ds))]
    assert not any(torch.equal(a, b) for a, b in zip(first, second))
    again = SliceDataset(data, "train", 4, mask_per_sample=True)  # a resumed run: same masks, any order
    set_dataset_epoch(Subset(again, range(len(again))), 1)
    assert all(torch.equal(again[i]["mask"], second[i]) for i in reversed(range(len(again))))
    item = again[3]
    expected = make_mask("fastmri-random", (40, 32), 4, seed=(42, 1, __import__("zlib").crc32(b"file0001"), 0),
                         layout="centered", axis=1)
    assert np.array_equal(item["mask"][0].numpy(), expected)
    full = ifft2c(np.asarray(h5py.File(data / "file0001.h5", "r")["kspace"][0], dtype=np.complex128))
    np.testing.assert_allclose(item["kspace"][0].numpy(), fft2c(full) * expected, atol=1e-6)


def test_mask_per_sample_on_a_magnitude_dataset(tiny_dataset):
    from sftkd_cli.mri.masks import undersample

    fixed = SliceDataset(tiny_dataset, "train", 4)
    ds = SliceDataset(tiny_dataset, "train", 4, mask_per_sample=True)
    item, base = ds[2], fixed[2]
    assert torch.equal(item["target"], base["target"]) and item.keys() == base.keys()
    assert not torch.equal(item["mask"], base["mask"])
    kspace, zf = undersample(item["target"][0].numpy(), item["mask"][0].numpy())
    assert np.array_equal(item["zf"][0].numpy(), zf) and np.array_equal(item["kspace"][0].numpy(), kspace)


def test_acquisition_filter_sample_rates_and_rerun(tmp_path):
    write_folder(tmp_path / "raw", 6, acquisitions=("CORPD_FBK", "CORPDFS_FBK"))
    result = prepare(tmp_path / "raw", tmp_path / "pd", acquisition="CORPD_FBK", val_fraction=0.4)
    assert sorted(result.manifest["volumes"]) == ["file0000", "file0002", "file0004"]
    assert result.manifest["source_details"]["skipped_acquisitions"] == {"CORPDFS_FBK": 3}
    assert prepare(tmp_path / "raw", tmp_path / "pd", acquisition="CORPD_FBK", val_fraction=0.4).unchanged
    with pytest.raises(SftkdError, match="no file of acquisition AXT2; found CORPDFS_FBK \\(3\\), CORPD_FBK \\(3\\)"):
        prepare(tmp_path / "raw", tmp_path / "none", acquisition="AXT2")
    volumes = prepare(tmp_path / "raw", tmp_path / "v", volume_sample_rate=0.5).manifest
    assert len(volumes["volumes"]) == 3 and sum(volumes["slices"].values()) == 9
    assert prepare(tmp_path / "raw", tmp_path / "v2", volume_sample_rate=0.5).manifest["volumes"].keys() == volumes["volumes"].keys()
    slices = prepare(tmp_path / "raw", tmp_path / "s", sample_rate=0.5).manifest
    assert sum(slices["slices"].values()) == 9 and len(slices["volumes"]) >= 3
    kept = {v: e["source_slices"] for v, e in slices["volumes"].items()}
    assert kept == {v: e["source_slices"] for v, e in prepare(tmp_path / "raw", tmp_path / "s2", sample_rate=0.5).manifest["volumes"].items()}
    with pytest.raises(SftkdError, match="give one or the other"):
        prepare(tmp_path / "raw", tmp_path / "x", sample_rate=0.5, volume_sample_rate=0.5)
    with pytest.raises(SftkdError, match="--sample-rate 0: expected a number in \\(0, 1\\]"):
        prepare(tmp_path / "raw", tmp_path / "x", sample_rate=0)


def test_an_up_to_date_rerun_hashes_only_changed_files(tmp_path, monkeypatch):
    """Complex sources too: an up-to-date re-run takes the recorded sha256 of files whose size and
    mtime are unchanged (no file read whole), and hashes a touched one again."""
    from test_data_prepare import backdate, count_hashing

    files = write_folder(tmp_path / "raw", 3)
    backdate(tmp_path / "raw")
    hashed = count_hashing(monkeypatch)
    first = prepare(tmp_path / "raw", tmp_path / "out")
    assert len(hashed) == 3
    hashed.clear()
    again = prepare(tmp_path / "raw", tmp_path / "out")
    assert again.unchanged and again.manifest == first.manifest and hashed == []
    info = files[1].stat()
    os.utime(files[1], ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert prepare(tmp_path / "raw", tmp_path / "out").unchanged and hashed == [files[1].name]


def test_val_id_left_without_slices_by_sampling_says_so(tmp_path):
    """--val naming an existing file that --sample-rate / --volume-sample-rate dropped says so, not
    'not found'."""
    write_folder(tmp_path / "raw", 6)
    listed = {f"file{i:04d}" for i in range(6)}
    for option, rate in (("sample_rate", 0.2), ("volume_sample_rate", 0.5)):
        kept = set(prepare(tmp_path / "raw", tmp_path / option, **{option: rate}).manifest["volumes"])
        dropped = sorted(listed - kept)[0]
        flag = "--" + option.replace("_", "-")
        with pytest.raises(SftkdError, match=f"^--val {dropped}: {flag} {rate:g} left it no slices; raise it"):
            prepare(tmp_path / "raw", tmp_path / "x", val=(dropped,), **{option: rate})
        assert prepare(tmp_path / "raw", tmp_path / f"{option}-val", val=(sorted(kept)[0],),
                       **{option: rate}).manifest["splits"]["val"] == [sorted(kept)[0]]
    assert not (tmp_path / "x").exists()


def test_volume_sample_rate_samples_each_split_folder(tmp_path):
    """As fastMRI samples each split's dataset: the one val file stays val (pooled with the train
    files, it could be dropped and a train file silently become val); 4 of the 8 train files."""
    write_folder(tmp_path / "raw" / "singlecoil_train", 8, slices=1)
    write_folder(tmp_path / "raw" / "singlecoil_val", 1, slices=1, prefix="val")
    splits = prepare(tmp_path / "raw", tmp_path / "d", volume_sample_rate=0.5).manifest["splits"]
    assert splits["val"] == ["val0000"] and len(splits["train"]) == 4 and splits["test"] == []
    assert all(v.startswith("file") for v in splits["train"])


def test_val_folder_becomes_test_with_an_explicit_val(knee, tmp_path):
    raw, _ = knee
    manifest = prepare(raw, tmp_path / "d", val_fraction=0.25).manifest
    assert manifest["splits"]["test"] == ["val0000", "val0001"] and len(manifest["splits"]["val"]) == 1


def test_sizes_one_size_or_size_option_keeps_the_target_aligned(tmp_path):
    write_singlecoil(tmp_path / "raw" / "a.h5", shape=(40, 32), seed=1)
    write_singlecoil(tmp_path / "raw" / "b.h5", shape=(40, 34), seed=2)
    write_singlecoil(tmp_path / "raw" / "c.h5", shape=(40, 32), seed=3)
    with pytest.raises(SftkdError, match=r"k-space sizes differ: 40x32 \(a.h5 and 1 other\), 40x34 \(b.h5\).*--size 40 32"):
        prepare(tmp_path / "raw", tmp_path / "d")
    (tmp_path / "raw" / "c.h5").unlink()
    manifest = prepare(tmp_path / "raw", tmp_path / "d", size=(40, 32), val=("a",)).manifest
    assert manifest["volumes"]["b"]["kspace"] == "resized" and manifest["volumes"]["a"]["kspace"] == "raw"
    item = SliceDataset(tmp_path / "d", "train", 4)[1]  # b, cropped in the image domain from 34 to 32 columns
    magnitude = np.hypot(item["target"][0].numpy(), item["target"][1].numpy())
    np.testing.assert_allclose(center_crop(magnitude, (24, 24)), item["target_mag"][0].numpy(), atol=1e-6)
    with pytest.raises(SftkdError, match="smaller than the 24 x 24 target"):
        prepare(tmp_path / "raw", tmp_path / "e", size=(40, 20))


def test_kspace_narrower_than_the_target_needs_size(tmp_path):
    """fastMRI's target of a narrow image is wider than its k-space: refused in one line without
    --size (evaluate could not centre-crop the reconstructions); --size zero-pads, target aligned."""
    path = write_singlecoil(tmp_path / "raw" / "n.h5", shape=(40, 21), crop=(24, 24), seed=3)
    result = sftkd("prepare-data", "fastmri", tmp_path / "raw", "--out", tmp_path / "d", ok=False)
    assert result.exit_code == 2 and not (tmp_path / "d").exists()
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: kspace 40x21 is smaller than its 24x24 reconstruction_esc; expected k-space at least "
        "the target size: pass --size 40 24 (images are zero-padded to it)"]
    manifest = prepare(tmp_path / "raw", tmp_path / "d", size=(40, 24), val_fraction=0.0).manifest
    assert manifest["image_size"] == [40, 24] and manifest["volumes"]["n"]["kspace"] == "resized"
    item = SliceDataset(tmp_path / "d", "train", 4)[1]
    magnitude = np.hypot(item["target"][0].numpy(), item["target"][1].numpy())
    np.testing.assert_allclose(center_crop(magnitude, (24, 24)), item["target_mag"][0].numpy(), atol=1e-6)


def test_mask_file_as_a_fastmri_vector(knee, tmp_path):
    raw, _ = knee
    line = make_mask("fastmri-equispaced", (1, 32), 4, seed=7, layout="centered", axis=1)[0]
    np.save(tmp_path / "line.npy", line)
    manifest = prepare(raw, tmp_path / "d", accelerations=(4.0,), mask_files={4.0: tmp_path / "line.npy"}).manifest
    assert manifest["mask"]["per_acceleration"]["acc4"]["origin"] == "file"
    assert manifest["mask"]["axis"] == manifest["mask"]["per_acceleration"]["acc4"]["axis"] == 1
    assert manifest["mask"]["per_acceleration"]["acc4"]["lines"] == int(line.sum())
    rows = make_mask("equispaced", (40, 32), 4, seed=7, layout="centered", axis=0)  # whole k-space rows
    np.save(tmp_path / "rows.npy", rows)
    mask = prepare(raw, tmp_path / "r", accelerations=(4.0,), mask_files={4.0: tmp_path / "rows.npy"}).manifest["mask"]
    assert mask["axis"] == mask["per_acceleration"]["acc4"]["axis"] == 0 and mask["per_acceleration"]["acc4"]["lines"] == 10
    assert np.array_equal(SliceDataset(tmp_path / "d", "val", 4)[0]["mask"][0, 5].numpy(), line)
    with pytest.raises(SftkdError, match="data.mask_per_sample: the 4x mask of dataset .* comes from a file"):
        SliceDataset(tmp_path / "d", "train", 4, mask_per_sample=True)


def test_a_mask_file_must_sample_the_dc_column_of_centred_k_space(knee, tmp_path):
    """fastMRI's k-space is centred (DC at column 32 // 2): a corner-layout mask is refused saying so."""
    raw, _ = knee
    line = np.zeros(32, dtype=np.float32)
    line[[0, 1, 31, 5, 9, 13, 22, 26]] = 1  # a centre band around the corner's DC, none at column 16
    np.save(tmp_path / "corner.npy", line)
    with pytest.raises(SftkdError) as refused:
        prepare(raw, tmp_path / "d", accelerations=(4.0,), mask_files={4.0: tmp_path / "corner.npy"})
    assert str(refused.value) == (f"--mask-file {tmp_path / 'corner.npy'}: does not sample the DC line of the source's "
                                  "centered k-space (column 16); it samples the corner layout's (column 0): "
                                  "expected a mask in the centered layout")
    assert not (tmp_path / "d").exists()


def test_refusals_are_one_line(tmp_path):
    write_multicoil(tmp_path / "mc" / "m.h5")
    result = sftkd("prepare-data", "fastmri", tmp_path / "mc", "--out", tmp_path / "o", ok=False)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'mc' / 'm.h5'}: a multi-coil fastMRI file (kspace (2, 4, 40, 32), reconstruction_rss); multi-coil "
        "data is not supported yet: expected single-coil files (kspace (slices, H, W) and reconstruction_esc)"]
    path = write_singlecoil(tmp_path / "test" / "t.h5")
    with h5py.File(path, "a") as f:
        del f["reconstruction_esc"]
    result = sftkd("prepare-data", "fastmri", tmp_path / "test", "--out", tmp_path / "o", ok=False)
    assert result.exit_code == 2 and "no reconstruction_esc" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = sftkd("prepare-data", "fastmri", tmp_path / "mc", "--out", tmp_path / "o", "--task", "sr", ok=False)
    assert result.exit_code == 2  # no --task option: the source decides (reconstruction)
    assert not (tmp_path / "o").exists()


def test_a_target_smaller_than_training_takes_is_refused_naming_the_file(tmp_path):
    """A 6 x 6 target (fine for the mask, too small for SSIM) was prepared, then refused by training or,
    with --convention fastmri, by evaluate after scoring."""
    path = write_singlecoil(tmp_path / "small" / "s.h5", shape=(8, 8), crop=(6, 6))
    result = sftkd("prepare-data", "fastmri", tmp_path / "small", "--out", tmp_path / "o", ok=False)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        f"error: {path}: kspace (3, 8, 8), reconstruction_esc (3, 6, 6); expected slices of at least 7 x 7"]
    assert not (tmp_path / "o").exists()


def write_test_file(path: Path, seed: int = 0) -> Path:
    """A fastMRI test / challenge file: undersampled k-space and its `mask`, no reconstruction_esc."""
    path = write_singlecoil(path, seed=seed)
    with h5py.File(path, "a") as f:
        del f["reconstruction_esc"]
        mask = np.zeros(f["kspace"].shape[-1], dtype=bool)
        mask[::4] = True
        f["kspace"][...] = f["kspace"][()] * mask
        f.create_dataset("mask", data=mask)
    return path


def test_test_and_challenge_files_beside_train_and_val_are_skipped_in_one_line(tmp_path):
    """The official tarballs unpacked side by side: singlecoil_test_v2/ (and challenge/) files have no
    target; they are skipped and counted in one note line, the rest is prepared."""
    raw = tmp_path / "knee"
    write_folder(raw / "singlecoil_train", 3)
    write_folder(raw / "singlecoil_val", 1, prefix="val")
    for i in range(2):
        write_test_file(raw / "singlecoil_test_v2" / f"test{i}.h5", seed=i)
    write_test_file(raw / "singlecoil_challenge" / "chal0.h5")
    result = sftkd("prepare-data", "fastmri", raw, "--out", tmp_path / "d", "--acc", "4")
    assert result.stderr.splitlines() == [
        "prepare-data: skipped 3 test files (singlecoil_challenge/..., singlecoil_test_v2/...) without a target "
        "(reconstruction_esc): fastMRI test data holds undersampled k-space only"]
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert sorted(manifest["volumes"]) == ["file0000", "file0001", "file0002", "val0000"]
    assert manifest["source_details"]["skipped_test_files"] == 3
    # test files only: refused as before; a file without the target that is no test file: refused
    result = sftkd("prepare-data", "fastmri", raw / "singlecoil_test_v2", "--out", tmp_path / "o", ok=False)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "2 test files (./...): no reconstruction_esc" in result.stderr
    with h5py.File(raw / "singlecoil_train" / "file0001.h5", "a") as f:
        del f["reconstruction_esc"]
    with pytest.raises(SftkdError, match="file0001.h5: no reconstruction_esc"):
        prepare(raw, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_prepares_and_magnitude_datasets_are_untouched(tmp_path, tiny_dataset):
    write_folder(tmp_path / "raw", 3)
    result = sftkd("prepare-data", "fastmri", tmp_path / "raw", "--out", tmp_path / "d", "--acc", "4,8",
                   "--mask-kind", "fastmri-equispaced", "--seed", "3")
    assert "prepared dataset" in result.stdout
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["accelerations"] == [4.0, 8.0] and manifest["mask"]["kind"] == "fastmri-equispaced"
    assert np.array_equal(np.load(tmp_path / "d" / "masks" / "acc8.npy"),
                          make_mask("fastmri-equispaced", (40, 32), 8, seed=3, layout="centered", axis=1))
    item = SliceDataset(tiny_dataset, "train", 4)[0]  # the paper's magnitude items, as before
    assert list(item) == ["target", "zf", "kspace", "mask", "volume", "slice"] and item["zf"].shape == (1, 16, 16)


def test_fastmri_smoke_plan_on_synthetic_files(tmp_path, monkeypatch):
    """recipes/plans/fastmri-smoke.yaml end to end on synthetic files: data, the complex teacher,
    student, SFT, Std-KD and SFT-KD-Recon (AT), evaluation and report."""
    import io

    from rich.console import Console

    from sftkd_cli.reproduce import load_plan, run_plan
    from sftkd_cli.runs import load_checkpoint

    write_folder(tmp_path / "raw" / "singlecoil_train", 4, slices=4)
    write_folder(tmp_path / "raw" / "singlecoil_val", 2, slices=3, prefix="val")
    plan_file = Path(__file__).resolve().parents[1] / "recipes" / "plans" / "fastmri-smoke.yaml"
    monkeypatch.chdir(tmp_path)  # the plan's data/fastmri-smoke lands here
    plan = load_plan(plan_file, runs_dir=tmp_path / "runs", data_root=tmp_path / "raw")
    outcome = run_plan(plan, console=Console(file=io.StringIO(), width=120))
    status = {r.id: r.status for r in outcome.results}
    assert set(status.values()) == {"done"}, status
    assert load_manifest(tmp_path / "data" / "fastmri-smoke")["acquisition"]["values"] == "complex"
    checkpoint = load_checkpoint(tmp_path / "runs" / "sft-kd-at" / "checkpoints" / "best.pt")
    assert checkpoint["trained_on"]["acquisition"]["values"] == "complex"
    assert json.loads((tmp_path / "runs" / "teacher" / "metrics.json").read_text())["dataset"]["source"] == "fastmri"
    assert status["report"] == "done", next(r.note for r in outcome.results if r.id == "report")


@pytest.mark.parametrize("folder, test", [("singlecoil_test_v2", True), ("singlecoil_challenge", True), ("test", True),
                                          ("Test-Set", True), ("test2", True), ("knee_test1", True), ("TestSet", True),
                                          ("SinglecoilTest", True), ("latest_scans", False), ("knee_contest", False),
                                          ("Latest", False), ("testing", False)])
def test_a_test_folder_is_told_by_the_word_not_by_letters_inside_another(folder: str, test: bool) -> None:
    """A target-less file under latest_scans/ is refused (a broken file), not skipped as a test file."""
    from sftkd_cli.data.sources.fastmri import _is_test_file

    assert _is_test_file({}, (folder,)) is test
