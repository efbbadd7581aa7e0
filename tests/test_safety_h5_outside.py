"""HDF5 entries and manifest mask paths never make sftkd read a file outside its input (CPU only).

- An HDF5 entry whose data lives outside its file (external raw storage, an external link, also
  reached through a soft link, a virtual dataset) is refused in one line naming the file and the entry, before h5py follows it:
  dataset volumes, a --mask-file .h5, a run's recon.h5, a fastMRI input file.
- A manifest's mask.files must name `masks/<name>.npy` inside the dataset (no '..', not absolute).

The outside file is a regular file here (a FIFO would hang the old code, and so the test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from fastmri_files import write_singlecoil
from test_hardening import copy_dataset

from sftkd_cli.data.dataset import SliceDataset, dataset_fingerprint, load_manifest, load_volume
from sftkd_cli.data.sources.fastmri import read_info
from sftkd_cli.errors import SftkdError
from sftkd_cli.mri.masks import load_mask
from sftkd_cli.report.figures import default_slice, read_recon_slice

OUTSIDE = "stores its data outside the file (external storage/link/virtual dataset)"
HOWS = ["external-storage", "external-link", "virtual", "soft-link-to-external"]


def point_outside(f: h5py.File, name: str, array: np.ndarray, folder: Path, how: str) -> None:
    """Replace (or create) entry `name` of `f` by one of the same shape whose data is in `folder`."""
    if name in f:
        del f[name]
    other = folder / "outside.h5"
    with h5py.File(other, "w") as o:
        o["data"] = array
    if how == "external-storage":
        raw = folder / "outside.bin"
        raw.write_bytes(np.ascontiguousarray(array).tobytes())
        f.create_dataset(name, shape=array.shape, dtype=array.dtype, external=[(str(raw), 0, array.nbytes)])
    elif how == "external-link":
        f[name] = h5py.ExternalLink(str(other), "data")
    elif how == "virtual":
        layout = h5py.VirtualLayout(shape=array.shape, dtype=array.dtype)
        layout[...] = h5py.VirtualSource(str(other), "data", shape=array.shape)
        f.create_virtual_dataset(name, layout)
    else:  # a soft link (a path in the file) to an external link
        f[f"hidden_{name.replace('/', '_')}"] = h5py.ExternalLink(str(other), "data")
        f[name] = h5py.SoftLink(f"/hidden_{name.replace('/', '_')}")


@pytest.mark.parametrize("how", HOWS)
def test_a_dataset_volume_with_data_outside_its_file_is_refused(tiny_dataset, tmp_path, how):
    data = copy_dataset(tiny_dataset, tmp_path)
    volume = load_manifest(data)["splits"]["test"][0]
    with h5py.File(data / f"{volume}.h5", "a") as f:
        point_outside(f, "image", f["image"][()], tmp_path, how)
    line = f"{volume}.h5: 'image' {OUTSIDE}; expected data stored in the file, as prepare-data writes it"
    with pytest.raises(SftkdError, match=line.replace("(", r"\(").replace(")", r"\)")):
        load_volume(data, volume, 4.0)
    with pytest.raises(SftkdError, match=f"{volume}.h5: 'image' stores its data outside"):
        SliceDataset(data, "test", 4.0)


@pytest.mark.parametrize("how", HOWS)
def test_a_mask_file_h5_with_data_outside_it_is_refused(tmp_path, how):
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[:, ::4] = 1
    path = tmp_path / "mask.h5"
    with h5py.File(path, "w") as f:
        point_outside(f, "mask", mask, tmp_path, how)
    with pytest.raises(SftkdError, match=f"mask.h5: 'mask' {OUTSIDE}".replace("(", r"\(").replace(")", r"\)")):
        load_mask(path, (16, 16))


@pytest.mark.parametrize("target", ["/stored/mask", "stored/mask"])
def test_a_mask_file_h5_with_a_soft_link_to_data_in_it_is_read(tmp_path, target):
    """A soft link is a path inside the same file: followed, its target's data read (it was refused
    as data outside the file)."""
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[:, ::4] = 1
    path = tmp_path / "mask.h5"
    with h5py.File(path, "w") as f:
        f["stored/mask"] = mask
        f["mask"] = h5py.SoftLink(target)
    assert np.array_equal(load_mask(path, (16, 16)), mask.astype(bool))


@pytest.mark.parametrize("how", HOWS)
def test_a_recon_h5_with_data_outside_it_is_refused(tmp_path, how):
    path = tmp_path / "recon.h5"
    with h5py.File(path, "w") as f:
        point_outside(f, "vol0", np.ones((2, 16, 16), dtype=np.float32), tmp_path, how)
    with pytest.raises(SftkdError, match=f"recon.h5: 'vol0' {OUTSIDE}".replace("(", r"\(").replace(")", r"\)")):
        read_recon_slice(path, "vol0", 0)
    with pytest.raises(SftkdError, match=f"recon.h5: 'vol0' {OUTSIDE}".replace("(", r"\(").replace(")", r"\)")):
        default_slice(path, "vol0")


@pytest.mark.parametrize("how", HOWS)
def test_a_fastmri_input_with_kspace_outside_it_is_refused(tmp_path, how):
    path = write_singlecoil(tmp_path / "raw" / "file1.h5")
    with h5py.File(path, "a") as f:
        point_outside(f, "kspace", f["kspace"][()], tmp_path, how)
    with pytest.raises(SftkdError, match=f"file1.h5: 'kspace' {OUTSIDE}".replace("(", r"\(").replace(")", r"\)")):
        read_info(path, tmp_path / "raw")


@pytest.mark.parametrize("value", ["../outside.npy", "/tmp/outside.npy", "masks/../../outside.npy", "acc4.npy",
                                   "masks/sub/acc4.npy", 7])
def test_a_manifest_mask_file_outside_the_dataset_is_refused(tiny_dataset, tmp_path, value):
    data = copy_dataset(tiny_dataset, tmp_path)
    shutil.copy(data / "masks" / "acc4.npy", tmp_path / "outside.npy")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["mask"]["files"]["acc4"] = value
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SftkdError, match=rf"manifest.json: mask.files.acc4 {value!r}, expected 'masks/<name>.npy'"):
        load_manifest(data)


def test_checking_mask_files_keeps_a_prepared_datasets_manifest_and_fingerprint(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path)
    before = (data / "manifest.json").read_bytes(), dataset_fingerprint(data)
    assert load_manifest(data)["mask"]["files"]["acc4"] == "masks/acc4.npy"
    assert ((data / "manifest.json").read_bytes(), dataset_fingerprint(data)) == before


@pytest.mark.parametrize("files", [None, {"acc4": "../mask.npy"}, {"acc4": "m.h5"}])
def test_an_out_manifest_with_bad_mask_files_is_not_prepare_datas(files):
    """--out's manifest and a dataset's share one mask.files check (`mask_files_problem`): a
    manifest whose mask.files no reader would accept is not one prepare-data wrote."""
    from sftkd_cli.data.format import FORMAT, MANIFEST_KEYS
    from sftkd_cli.data.output import _foreign, mask_files_problem

    manifest = {key: {} for key in MANIFEST_KEYS} | {"format": FORMAT, "mask": {"files": files}}
    assert _foreign(manifest) == mask_files_problem(files) is not None
    assert _foreign(manifest | {"mask": {"files": {"acc4": "masks/m.npy"}}}) is None
