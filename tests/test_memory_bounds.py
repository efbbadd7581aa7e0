"""Memory at scale, on large datasets:
- data.cache reads a split from disk when it would not fit its share of the memory available;

Device: none (CPU; the memory available is faked where a test needs a small machine).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sftkd_cli.data.dataset as dataset_module
import sftkd_cli.memory as memory
from sftkd_cli.data.dataset import SliceDataset

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