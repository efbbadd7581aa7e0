"""The datasets held on the training device (sftkd_cli.training.device_data).

Device: the comparisons with the host path run on the CPU, where the path is forced (a stacked
copy in memory, the same code as on CUDA); training on it gives the same weights bit for bit,
also with per-sample masks that change every epoch. A split is stacked a chunk at a time, and
a mask the same for every item is held once. The test marked `cuda` checks that CUDA picks it by
itself and gathers the same batches on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, Subset

import complex_data
from cli_helpers import sftkd
from sftkd_cli.errors import SftkdError
from sftkd_cli.runs import load_checkpoint
from sftkd_cli.runtime import collate, to_device
from sftkd_cli.training import device_data, engine
from sftkd_cli.training.device_data import DeviceDataset, on_device
from sftkd_cli.training.engine import batches
from test_engine import Phantoms, _fit as train_phantoms

complex_dataset = complex_data.complex_dataset
CPU = torch.device("cpu")


class ByEpoch(Dataset):
    """Items whose zf changes with the epoch (as per-sample masks do); counts the items read."""

    varies_by_epoch = True

    def __init__(self, n: int = 5) -> None:
        self.base = Phantoms(n)
        self.epoch = 0
        self.reads = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        item = dict(self.base[i])
        item["zf"] = item["zf"] + self.epoch
        return item


def _host_batches(dataset: Dataset, order: list[int], size: int) -> list[dict[str, torch.Tensor]]:
    return [collate([dataset[i] for i in order[start:start + size]]) for start in range(0, len(order), size)]


def _same_batches(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_batches_gathered_on_the_device_equal_the_collated_ones():
    source = Subset(Phantoms(7), [6, 0, 3, 2, 5])
    stacked = on_device(source, CPU, wanted=True)
    assert isinstance(stacked, DeviceDataset) and len(stacked) == 5
    order = [4, 1, 0, 3, 2]
    assert _same_batches(list(batches(stacked, order, 2)), _host_batches(source, order, 2))  # sizes 2, 2, 1
    item, expected = stacked[3], source[3]
    assert item.keys() == expected.keys() and (item["volume"], item["slice"]) == ("v", 2)
    assert all(torch.equal(item[k], expected[k]) for k in ("target", "zf", "kspace", "mask"))


def test_items_that_change_with_the_epoch_are_stacked_once_per_epoch():
    source = ByEpoch()
    stacked = DeviceDataset(Subset(source, range(5)), CPU)
    assert stacked.varies_by_epoch
    order = [3, 1, 4, 0, 2]
    for epoch, reads in ((0, 5), (1, 5), (1, 0), (2, 5)):  # the same epoch again: nothing read
        engine.set_dataset_epoch(stacked, epoch)  # as the engine does, through the wrapper
        before = source.reads
        got = list(batches(stacked, order, 2))
        assert source.reads - before == reads, epoch
        assert _same_batches(got, _host_batches(source, order, 2)), epoch
        assert torch.equal(got[0]["zf"], source.base.zf[[3, 1]] + epoch)


class Varied(Dataset):
    """Phantoms whose items from `changed` on get a `key` of another value (or shape, `shape`)."""

    def __init__(self, changed: int, key: str = "mask", shape: bool = False) -> None:
        self.base, self.changed, self.key, self.shape = Phantoms(5), changed, key, shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        if i >= self.changed:
            item[self.key] = item[self.key][..., :-1] if self.shape else 1 - item[self.key]
        return item


def _chunks_of(monkeypatch, items: int) -> list[int]:
    """Chunks of `items` phantoms while stacking; the sizes collated are recorded in the list returned."""
    sizes: list[int] = []
    monkeypatch.setattr(device_data, "STACK_CHUNK_BYTES", items * device_data.device_bytes(Phantoms(1)), raising=False)
    monkeypatch.setattr(device_data, "collate", lambda chunk: sizes.append(len(chunk)) or collate(chunk))
    return sizes


def test_a_split_is_stacked_a_chunk_at_a_time(monkeypatch):
    """The host holds one chunk of items while stacking, not the whole split (nor a second copy)."""
    sizes = _chunks_of(monkeypatch, 2)
    source = Phantoms(5)
    stacked = DeviceDataset(source, CPU)
    order = [4, 1, 0, 3, 2]
    got = list(batches(stacked, order, 3))
    assert sizes == [2, 2, 1]
    assert _same_batches(got, _host_batches(source, order, 3))


def test_a_mask_the_same_for_every_item_is_held_once(monkeypatch):
    """One mask expanded to all the items, not a copy each; the batches gathered are the
    collated ones (values, shapes, contiguous: CUDA graphs copy from them)."""
    _chunks_of(monkeypatch, 2)
    source = Phantoms(5)
    stacked = DeviceDataset(source, CPU)
    mask = stacked.tensors()["mask"]
    assert mask.shape == (5, 1, 12, 12) and mask.stride(0) == 0
    assert mask.untyped_storage().nbytes() == source.mask.nbytes
    assert all(stacked.tensors()[k].stride(0) > 0 for k in ("target", "zf", "kspace"))
    order = [4, 1, 0, 3, 2]
    got = list(batches(stacked, order, 2))
    assert _same_batches(got, _host_batches(source, order, 2))
    assert all(batch["mask"].is_contiguous() for batch in got)
    assert torch.equal(stacked[3]["mask"], source.mask)


@pytest.mark.parametrize("changed", [1, 3])  # within the first chunk, in a later one
def test_masks_that_differ_are_held_per_item(monkeypatch, changed):
    _chunks_of(monkeypatch, 2)
    source = Varied(changed)
    stacked = DeviceDataset(source, CPU)
    assert stacked.tensors()["mask"].stride(0) > 0
    order = [4, 1, 0, 3, 2]
    assert _same_batches(list(batches(stacked, order, 2)), _host_batches(source, order, 2))


def test_an_item_shaped_unlike_the_first_is_one_error(monkeypatch):
    _chunks_of(monkeypatch, 2)
    expected = r"dataset item 2: 'zf' is \(1, 12, 11\) torch.float32, item 0's \(1, 12, 12\) torch.float32"
    with pytest.raises(SftkdError, match=expected):
        DeviceDataset(Varied(2, "zf", shape=True), CPU).tensors()


def test_on_device_is_auto_on_cuda_only_and_leaves_empty_splits_alone():
    data = Phantoms(3)
    assert on_device(data, CPU) is data and on_device(data, CPU, wanted=False) is data
    empty = Subset(data, [])
    assert on_device(empty, CPU, wanted=True) is empty
    assert device_data.device_bytes(data) == 3 * sum(data[0][k].nbytes for k in ("target", "zf", "kspace", "mask"))


def test_a_split_goes_on_the_gpu_when_it_fits_in_a_quarter_of_the_free_memory(monkeypatch):
    """Device: CPU (the GPU's memory stood in for): free memory counts, not the total, since
    other stages may share the GPU; so does what this process has cached but does not use."""
    data = Phantoms(3)
    size = device_data.device_bytes(data)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * size)  # 2 x size cached, unused
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: size)
    for free, fits in ((2 * size, True), (2 * size - 1, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 100 * size))
        assert device_data.fits_on_device(data, torch.device("cuda")) is fits


def _fit(tmp_path, name, data_on_device):
    return train_phantoms(tmp_path, name, train=Phantoms(5), val=Phantoms(3, seed=1), data_on_device=data_on_device)[1]


def test_training_on_the_device_path_gives_the_host_paths_weights_and_scores(tmp_path):
    host, device = _fit(tmp_path, "host", False), _fit(tmp_path, "device", True)
    a, b = (load_checkpoint(run.checkpoint("last"))["objective"] for run in (host, device))
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ("seconds",)
    assert [{k: v for k, v in row.items() if k not in drop} for row in host.read_history()] == \
           [{k: v for k, v in row.items() if k not in drop} for row in device.read_history()]


def test_per_sample_masks_train_the_same_on_the_device_path(complex_dataset, tmp_path, monkeypatch):
    """data.mask_per_sample on real (complex) data: restacked each epoch, the same weights as the host path."""
    base = [f"data.path={complex_dataset}", f"run.dir={tmp_path}", *complex_data.BASE, "train.max_steps_per_epoch=3",
            "--model", "D2C2", "train.epochs=2", "data.mask_per_sample=true"]
    sftkd("train-teacher", "--name", "host", *base)
    monkeypatch.setattr(engine, "on_device", lambda dataset, device, wanted=None: on_device(dataset, device, True))
    sftkd("train-teacher", "--name", "device", *base)
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["objective"] for name in ("host", "device"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cuda
def test_cuda_holds_the_splits_on_the_gpu_and_gathers_the_same_batches():
    """Device: CUDA."""
    cuda = torch.device("cuda")
    source = Phantoms(5)
    stacked = on_device(source, cuda)
    assert isinstance(stacked, DeviceDataset)
    order = [4, 1, 0, 3, 2]
    got = list(batches(stacked, order, 2))
    assert all(t.device.type == "cuda" for batch in got for t in batch.values())
    expected = [to_device(batch, cuda) for batch in _host_batches(source, order, 2)]
    assert _same_batches(got, expected)
