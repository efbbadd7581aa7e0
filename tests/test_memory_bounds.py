"""Memory at scale, on large datasets:
- data.cache reads a split from disk when it would not fit its share of the memory available;
- smoke runs (data.max_train_slices, max_val_slices) cut their splits before caching;
- a read that may have run out of memory is not called corruption alone;
- prepare-data keeps fewer prepared stacks in memory on a small machine;
- evaluate hands each volume's freed memory back to the system.

Device: none (CPU; the memory available is faked where a test needs a small machine).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import torch

import sftkd_cli.data.dataset as dataset_module
import sftkd_cli.memory as memory
from cli_helpers import sftkd
from sftkd_cli.data.dataset import SliceDataset
from sftkd_cli.errors import SftkdError

torch.set_num_threads(1)

TRAIN_BYTES = 9 * 16 * 16 * 16  # tiny_dataset's train split cached: 9 slices of 16x16, 16 bytes a pixel


def _same_items(a: SliceDataset, b: SliceDataset) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        for key in ("target", "zf", "kspace", "mask"):
            assert torch.equal(a[i][key], b[i][key])
        assert (a[i]["volume"], a[i]["slice"]) == (b[i]["volume"], b[i]["slice"])


@pytest.mark.parametrize("available, cached", [(4 * TRAIN_BYTES, True), (4 * TRAIN_BYTES - 1, False), (None, True)])
def test_data_cache_reads_from_disk_a_split_larger_than_its_share_of_memory(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, available: int | None, cached: bool) -> None:
    monkeypatch.setattr(dataset_module, "available_bytes", lambda: available)
    ds = SliceDataset(tiny_dataset, "train", 4, cache=True)
    assert (ds._cache is not None) == cached
    if cached:  # fits (or the system does not say): held, as before
        assert ds.cache_note == ""
    else:
        assert ds.cache_note.startswith("data.cache: the train split (0 MiB) would take more than 25% of the memory "
                                        "available (0 MiB); its slices are read from disk as needed")
    _same_items(ds, SliceDataset(tiny_dataset, "train", 4))


def test_the_share_is_divided_among_torchrun_processes_on_the_machine(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "available_bytes", lambda: 4 * TRAIN_BYTES)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # each process would hold its own copy
    ds = SliceDataset(tiny_dataset, "train", 4, cache=True)
    assert ds._cache is None and "shared by 2 processes" in ds.cache_note


def test_max_slices_keeps_the_first_slices_and_caches_only_those(tiny_dataset: Path) -> None:
    full = SliceDataset(tiny_dataset, "train", 4)
    cut = SliceDataset(tiny_dataset, "train", 4, cache=True, max_slices=4)  # vol0's 3 slices and vol2's first
    assert len(cut) == 4 and cut.volumes == ["vol0", "vol2"]
    assert {v: a["image"].shape[0] for v, a in cut._cache.items()} == {"vol0": 3, "vol2": 1}  # type: ignore[union-attr]
    for i in range(4):
        assert (cut[i]["volume"], cut[i]["slice"]) == (full[i]["volume"], full[i]["slice"])
        assert torch.equal(cut[i]["kspace"], full[i]["kspace"])
    assert len(SliceDataset(tiny_dataset, "train", 4, max_slices=100)) == len(full)


def test_smoke_runs_cut_their_splits_before_caching_and_a_fallback_is_said(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[tuple[str, int]] = []
    real = SliceDataset._load_all

    def spy(self, volume, count=None):
        loaded.append((volume, count))
        return real(self, volume, count) if count is not None else real(self, volume)

    monkeypatch.setattr(SliceDataset, "_load_all", spy)
    common = [f"data.path={tiny_dataset}", f"run.dir={tmp_path}", "train.device=cpu", "train.epochs=1",
              "train.batch_size=2", "train.threads=1", "eval.latency_slices=0", "data.cache=true"]
    result = sftkd("train-teacher", "--model", "D2C2", "--name", "cut", *common,
                   "data.max_train_slices=2", "data.max_val_slices=1")
    assert loaded == [("vol0", 2), ("vol1", 1)]  # not the whole splits
    assert "train 2 slices, val 1" in result.output and "data.cache" not in result.output

    loaded.clear()
    monkeypatch.setattr(dataset_module, "available_bytes", lambda: 1000)
    result = sftkd("train-teacher", "--model", "D2C2", "--name", "disk", *common, "train.max_steps_per_epoch=1")
    assert loaded == []
    notes = [line for line in result.output.splitlines() if line.startswith("data.cache: ")]
    assert [note.split(" split")[0] for note in notes] == ["data.cache: the train", "data.cache: the val"]


def _damage_first_kspace_chunk(path: Path) -> None:
    """Zero the deflate stream of the first gzip chunk of acc4/kspace: HDF5's gzip filter then
    fails as it does when it cannot allocate memory ("filter returned failure during read")."""
    with h5py.File(path, "r") as f:
        info = f["acc4/kspace"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 2: info.byte_offset + info.size - 4] = bytes(info.size - 6)
    path.write_bytes(bytes(data))


def test_a_read_that_fails_in_its_filter_is_not_called_corruption_alone(tiny_dataset: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    _damage_first_kspace_chunk(root / "vol2.h5")
    with pytest.raises(SftkdError) as info:
        SliceDataset(root, "train", 4, cache=True)
    message = str(info.value)
    assert message.startswith(f"{root / 'vol2.h5'}: volume could not be read (")
    assert message.endswith("filter returned failure during read)): out of memory or a corrupt file; "
                            "data.cache=false reads slices as needed")
    with pytest.raises(SftkdError, match=r"vol2.h5: slice 0 could not be read \(.*\): out of memory or a corrupt file$"):
        SliceDataset(root, "train", 4)[3]


def test_available_bytes_is_lowered_by_a_container_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = memory.available_bytes()
    if Path("/proc/meminfo").exists():
        assert found is not None and found > 0
    (tmp_path / "max").write_text("1000\n")
    (tmp_path / "current").write_text("400\n")
    (tmp_path / "unlimited").write_text("max\n")
    monkeypatch.setattr(memory, "_CGROUP_FILES", ((str(tmp_path / "unlimited"), str(tmp_path / "current")),
                                                  (str(tmp_path / "max"), str(tmp_path / "current"))))
    assert memory.available_bytes() == 600


def test_release_heap_is_harmless_where_there_is_no_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    assert memory.release_heap() in (True, False)  # glibc: trims; elsewhere: nothing
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.release_heap() is False

    def broken(pad: int) -> int:
        raise OSError("no")

    monkeypatch.setattr(memory, "_malloc_trim", lambda: broken)
    assert memory.release_heap() is False


def test_evaluate_trims_the_heap_after_each_volume(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sftkd_cli.evaluate as evaluate_module

    handed: list[str] = []
    trims: list[int] = []  # volumes handed on at each trim
    monkeypatch.setattr(evaluate_module, "release_heap", lambda: trims.append(len(handed)))
    evaluate_module.reconstruct_split(lambda zf, kspace, mask: zf, SliceDataset(tiny_dataset, "train", 4),
                                      torch.device("cpu"), batch_size=2, each_volume=lambda name, v: handed.append(name))
    assert handed == ["vol0", "vol2", "vol4"] and trims == [0, 1, 2]  # as each volume starts, the one before let go


def test_prepare_keeps_fewer_stacks_in_memory_on_a_small_machine(
        tmp_path: Path, nifti_writer, monkeypatch: pytest.MonkeyPatch) -> None:
    import sftkd_cli.data.prepare as prepare_module
    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.sources import NiftiSource

    for i in range(2):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom(seed=i))
    reads: list[str] = []
    real = prepare_module._prepare_file

    def spy(source, file, options):
        reads.append(file.rel)
        return real(source, file, options)

    monkeypatch.setattr(prepare_module, "_prepare_file", spy)
    monkeypatch.setattr(prepare_module, "available_bytes", lambda: 1000)  # a machine with no memory to spare
    prepare_module.prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "out", PrepareOptions(size=(16, 16)))
    assert len(reads) == 4  # each file read again when written: its stack was not kept

    monkeypatch.setattr(prepare_module, "available_bytes", lambda: 1 << 30)
    assert prepare_module.keep_in_memory_limit() == 256 << 20
    monkeypatch.setattr(prepare_module, "available_bytes", lambda: 64 << 30)
    assert prepare_module.keep_in_memory_limit() == prepare_module.KEEP_IN_MEMORY_BYTES == 2 << 30
    monkeypatch.setattr(prepare_module, "available_bytes", lambda: None)
    assert prepare_module.keep_in_memory_limit() == 2 << 30
