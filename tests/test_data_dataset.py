"""SliceDataset over a prepared dataset: items, lazy vs cached reading, workers, and its errors."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from complex_data import complex_dataset  # noqa: F401  (a fixture)
from sftkd_cli.data.dataset import SliceDataset, dataset_fingerprint, load_manifest, load_volume
from sftkd_cli.errors import SftkdError

torch.set_num_threads(1)


def test_items_shapes_dtypes_and_content(tiny_dataset: Path) -> None:
    ds = SliceDataset(tiny_dataset, "train", 4)
    manifest = load_manifest(tiny_dataset)
    assert ds.volumes == manifest["splits"]["train"] == ["vol0", "vol2", "vol4"]
    assert len(ds) == 9  # 3 volumes x 3 slices
    item = ds[4]
    assert item["volume"] == "vol2" and item["slice"] == 1
    assert item["target"].shape == item["zf"].shape == item["mask"].shape == (1, 16, 16)
    assert item["target"].dtype == torch.float32 and item["zf"].dtype == torch.float32
    assert item["kspace"].dtype == torch.complex64 and item["mask"].dtype == torch.float32
    with h5py.File(tiny_dataset / "vol2.h5", "r") as f:
        np.testing.assert_array_equal(item["target"][0].numpy(), f["image"][1])
        np.testing.assert_array_equal(item["mask"][0].numpy(), f["acc4/mask"][()])
    # target and zero-filled agree with the k-space (numpy oracle, corner layout)
    target = item["target"][0].numpy().astype(np.float64)
    mask = item["mask"][0].numpy()
    k = np.fft.fft2(target, norm="ortho") * mask
    np.testing.assert_allclose(item["kspace"][0].numpy(), k, atol=1e-5)
    np.testing.assert_allclose(item["zf"][0].numpy(), np.abs(np.fft.ifft2(k, norm="ortho")), atol=1e-5)


def test_cache_equals_lazy_and_other_split_and_acceleration(tiny_dataset: Path) -> None:
    lazy, cached = SliceDataset(tiny_dataset, "val", 5), SliceDataset(tiny_dataset, "val", 5.0, cache=True)
    assert len(lazy) == len(cached) == 3 and lazy.volumes == ["vol1"]
    for i in range(len(lazy)):
        a, b = lazy[i], cached[i]
        for key in ("target", "zf", "kspace", "mask"):
            assert torch.equal(a[key], b[key])
        assert (a["volume"], a["slice"]) == (b["volume"], b["slice"])
    assert int(lazy.mask[0, :, 0].sum()) == round(16 / 5)
    assert len(SliceDataset(tiny_dataset, "test", 4)) == 3


def test_dataloader_batches_and_worker_processes(tiny_dataset: Path) -> None:
    ds = SliceDataset(tiny_dataset, "train", 4)
    ds[0]  # opens a handle in this process; the dataset must still pickle and fork cleanly
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0]["target"], ds[0]["target"])
    batches = list(DataLoader(ds, batch_size=4, num_workers=1, shuffle=False))
    assert [b["target"].shape[0] for b in batches] == [4, 4, 1]
    assert batches[0]["kspace"].dtype == torch.complex64
    assert list(batches[0]["volume"]) == ["vol0", "vol0", "vol0", "vol2"]
    ds.close()


def test_fingerprint_and_load_volume(tiny_dataset: Path) -> None:
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    without_sizes = {k: v for k, v in manifest.items() if k != "file_bytes"}  # as the manifest was before them
    assert dataset_fingerprint(tiny_dataset) == hashlib.sha256((json.dumps(without_sizes, indent=2) + "\n").encode()).hexdigest()
    arrays = load_volume(tiny_dataset, "vol3", 5)
    assert arrays["image"].shape == arrays["zf"].shape == (3, 16, 16) and arrays["mask"].shape == (16, 16)
    with pytest.raises(SftkdError, match=r"volume 'nope' not in dataset .* \(has vol0, vol1, vol2, vol3, vol4\)"):
        load_volume(tiny_dataset, "nope", 4)


def test_errors_in_arguments(tiny_dataset: Path, tmp_path: Path) -> None:
    name = tiny_dataset.name
    with pytest.raises(SftkdError, match=rf"acceleration 3 not in dataset .*{name} \(has 4, 5\)"):
        SliceDataset(tiny_dataset, "train", 3)
    with pytest.raises(SftkdError, match=r"split 'training' not in dataset .* \(has train, val, test\)"):
        SliceDataset(tiny_dataset, "training", 4)
    with pytest.raises(SftkdError, match="no manifest.json"):
        SliceDataset(tmp_path, "train", 4)
    with pytest.raises(SftkdError, match="dataset folder not found"):
        SliceDataset(tmp_path / "missing", "train", 4)


def _copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))


def test_empty_split_and_bad_manifest(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["test"] = []
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SftkdError, match="split 'test' of dataset .* is empty"):
        SliceDataset(root, "test", 4)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(SftkdError, match=r"manifest.json: unreadable"):
        SliceDataset(root, "train", 4)
    (root / "manifest.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(SftkdError, match=r"manifest.json: format 99, expected 1"):
        load_manifest(root)


def test_corrupt_or_missing_h5_names_the_file(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)
    (root / "vol2.h5").write_bytes(b"this is not hdf5")
    with pytest.raises(SftkdError, match=r"vol2.h5: cannot read dataset"):
        SliceDataset(root, "train", 4)
    (root / "vol2.h5").unlink()
    with pytest.raises(SftkdError, match=r"vol2.h5: file missing from the dataset"):
        SliceDataset(root, "train", 4)
    shutil.copy(tiny_dataset / "vol2.h5", root / "vol2.h5")
    with h5py.File(root / "vol2.h5", "a") as f:
        del f["acc4/zf"]
    with pytest.raises(SftkdError, match=r"vol2.h5: dataset 'acc4/zf' missing"):
        SliceDataset(root, "train", 4)


def test_an_h5_that_cannot_be_read_or_is_not_a_file_is_said_to_be_so_not_corrupt_or_missing(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    import sftkd_cli.data.dataset as dataset_module

    root = _copy(tiny_dataset, tmp_path)
    path = root / "vol2.h5"
    path.chmod(0)
    if os.access(path, os.R_OK):  # root, whom chmod does not stop: the error h5py raises for others
        real = h5py.File

        def denied(name, *args, **kwargs):
            if Path(name) == path:
                raise OSError(errno.EACCES, f"Unable to synchronously open file (unable to open file: name = '{name}', "
                                            "errno = 13, error message = 'Permission denied', flags = 0, o_flags = 0)")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(dataset_module.h5py, "File", denied)
    reads = (lambda: SliceDataset(root, "train", 4), lambda: load_volume(root, "vol2", 4))
    for read in reads:
        with pytest.raises(SftkdError, match=r"vol2.h5: cannot read (dataset|volume vol2) \(Permission denied\)$"):
            read()
    monkeypatch.undo()
    path.unlink()
    for make, kind in ((Path.mkdir, "a folder"), (os.mkfifo, "a FIFO")):  # h5py would wait for ever on a FIFO
        make(path)
        for read in reads:
            with pytest.raises(SftkdError, match=rf"vol2.h5: not a regular file \({kind}\); expected the h5 file "
                                                 "prepare-data wrote there$"):
                read()
        os.rmdir(path) if path.is_dir() else path.unlink()


def test_file_corrupted_after_construction(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)
    ds = SliceDataset(root, "val", 4)
    (root / "vol1.h5").write_bytes(b"garbage")
    with pytest.raises(SftkdError, match=r"vol1.h5: cannot read file"):
        ds[0]


def test_a_split_read_from_disk_keeps_few_files_open_and_a_file_limit_is_not_called_corruption(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Magnitude data read lazily (evaluate, data.cache=false) closes the oldest file past the cap,
    as complex data does: a split of more volumes than the process may open is read in full."""
    import errno

    import sftkd_cli.data.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "MAX_OPEN_FILES", 2)
    lazy, cached = SliceDataset(tiny_dataset, "train", 4), SliceDataset(tiny_dataset, "train", 4, cache=True)
    assert len(lazy.volumes) == 3
    for i in range(len(lazy)):
        assert torch.equal(lazy[i]["zf"], cached[i]["zf"])
        assert len(lazy._handles) <= 2

    def no_more_files(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(dataset_module.h5py, "File", no_more_files)
    with pytest.raises(SftkdError, match="too many open files in this process") as info:
        SliceDataset(tiny_dataset, "val", 4)[0]
    assert "corrupt" not in str(info.value)


def test_an_all_zero_volume_is_refused_naming_its_file(tiny_dataset: Path, tmp_path: Path) -> None:
    """Its maximum, the PSNR/SSIM data range, is 0: refused when the split is opened, not at the
    first validation; a volume with signal in its last slice only is read through and accepted."""
    root = _copy(tiny_dataset, tmp_path)
    with h5py.File(root / "vol1.h5", "a") as f:
        f["image"][...] = 0.0
    with pytest.raises(SftkdError, match=r"vol1\.h5: image maximum 0 over its 3 slices; expected > 0"):
        SliceDataset(root, "val", 4)
    with h5py.File(root / "vol1.h5", "a") as f:
        f["image"][2, 0, 0] = 0.5  # the middle slice and its centre row stay empty
    assert len(SliceDataset(root, "val", 4)) == 3


@pytest.mark.parametrize("name", ["target_mag", "kspace"])
def test_an_all_zero_complex_volume_is_refused_naming_its_file(complex_dataset: Path, tmp_path: Path, name: str) -> None:
    root = Path(shutil.copytree(complex_dataset, tmp_path / "copy"))
    volume = load_manifest(root)["splits"]["val"][0]
    path = root / load_manifest(root)["volumes"][volume]["file"]
    with h5py.File(path, "a") as f:
        f[name][...] = 0
    with pytest.raises(SftkdError, match=rf"{path.name}: {name} maximum 0 over its 4 slices; expected > 0"):
        SliceDataset(root, "val", 4)


@pytest.mark.parametrize("bad, expected", [(np.nan, "expected finite mask values"),
                                           (0.5, r"expected mask values in \{0, 1\}, found 0, 0.5, 1")])
def test_a_bad_stored_mask_is_refused_naming_its_own_file(tiny_dataset: Path, tmp_path: Path, bad: float,
                                                          expected: str) -> None:
    """A NaN would count as sampled; in the split's first volume it was blamed on the next file
    ("differs from the other volumes'"), so each file's mask is checked on its own."""
    root = _copy(tiny_dataset, tmp_path)
    with h5py.File(root / "vol0.h5", "a") as f:  # the train split's first volume
        f["acc4/mask"][0, :4] = bad
    with pytest.raises(SftkdError, match=rf"vol0\.h5: acc4/mask: {expected}"):
        SliceDataset(root, "train", 4)
    with h5py.File(root / "vol0.h5", "a") as f:
        del f["acc4/mask"]
        f["acc4/mask"] = np.zeros((16, 8), dtype=np.float32)
    with pytest.raises(SftkdError, match=r"vol0\.h5: acc4/mask has shape \(16, 8\), expected \(16, 16\)"):
        SliceDataset(root, "train", 4)


def test_names_shown_lists_the_first_names_and_counts_the_rest() -> None:
    from sftkd_cli.errors import names_shown

    assert names_shown(["a", "b"]) == "a, b"
    assert names_shown([f"v{i}" for i in range(10)]) == "v0, v1, v2, v3, v4, v5, v6, v7 and 2 more"
    assert names_shown(["a", "b", "c", "d"], 3) == "a, b, c and 1 more"
