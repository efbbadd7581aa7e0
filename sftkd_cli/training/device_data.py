"""A dataset held on the training device: every item's tensors stacked there once, batches gathered.

The host path reads a batch's items, stacks them and copies the batch to the device, every
step. On CUDA that per-step host work and copy can leave the GPU waiting; the prepared
datasets are small (megabytes to a few hundred), so `on_device` stacks a split's tensors on the
device once and each batch is one `index_select` per tensor there, in the same order and with
the same values as the host path (collate of the same items): the weights after training are
identical (checked on the CPU in the tests).

A split is stacked a chunk of items (about `STACK_CHUNK_BYTES`) at a time into tensors
allocated on the device once, so the host holds one chunk, not the whole split. A tensor the
same for every item (the split's fixed mask) is held once, expanded to all the items (no memory
per item); a batch gathered from it is an ordinary tensor, equal to the collated one.

`data.mask_per_sample` draws new masks every epoch: such a split is stacked again when
`set_epoch` moves to another epoch (once per epoch, one copy), so its items stay those of
the epoch. A split larger than `MAX_DEVICE_FRACTION` of the GPU memory free when training starts
stays on the host path (free, not total: stages of `reproduce --jobs` may share the GPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from sftkd_cli.data.dataset import dataset_varies_by_epoch, set_dataset_epoch
from sftkd_cli.errors import SftkdError
from sftkd_cli.runtime import TENSOR_KEYS, Batch, collate

#: the largest share of the GPU's free memory a split may take on the device (else the host path)
MAX_DEVICE_FRACTION = 0.25

#: the bytes of items read and collated on the host at a time while a split is stacked on the
#: device (at least one item); larger chunks only hold more host memory, not stack faster
STACK_CHUNK_BYTES = 64 * 2**20


class DeviceDataset(Dataset):
    """`source`'s items with their tensors (TENSOR_KEYS) stacked on `device`; other entries
    (volume, slice, ...) kept as the source gives them. Stacked on first use."""

    def __init__(self, source: Dataset, device: torch.device) -> None:
        self.source = source
        self.device = device
        self._tensors: Batch | None = None
        self._rest: list[dict[str, Any]] = []
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    @property
    def varies_by_epoch(self) -> bool:
        return dataset_varies_by_epoch(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the source; a source whose items change with it is stacked again."""
        set_dataset_epoch(self.source, epoch)
        if epoch != self._epoch and self.varies_by_epoch:
            self._tensors = None
        self._epoch = epoch

    def tensors(self) -> Batch:
        """All items' tensors, stacked on the device (read from the source on first use)."""
        if self._tensors is None:
            self._tensors = self._stack()
        return self._tensors

    def _stack(self) -> Batch:
        """The source's items stacked on the device a chunk (STACK_CHUNK_BYTES) at a time, so
        the host holds one chunk; their other entries kept in `_rest`."""
        count = len(self)
        stacked: Batch = {}
        self._rest = []
        start = 0
        while start < count:
            first = self.source[start]
            end = min(start + max(1, STACK_CHUNK_BYTES // max(1, _item_bytes(first))), count)
            items = [first, *(self.source[i] for i in range(start + 1, end))]
            self._rest.extend({key: value for key, value in item.items() if key not in TENSOR_KEYS} for item in items)
            for key, rows in collate(items).items():
                if key not in stacked:  # the first item's value, held once for all items until one differs
                    stacked[key] = rows[:1].to(self.device, copy=True).expand(count, *rows.shape[1:])
                stacked[key] = _put(stacked[key], rows, start, key)
            start = end
        return stacked

    def __getitem__(self, index: int) -> dict[str, Any]:
        tensors = self.tensors()
        return {**{key: value[index] for key, value in tensors.items()}, **self._rest[index]}

    def take(self, index: torch.Tensor) -> Batch:
        """The batch of the items at `index` (a long tensor on the device)."""
        return {key: value.index_select(0, index) for key, value in self.tensors().items()}

    def batches(self, order: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """The batches of `batch_size` items in `order` (the order copied to the device once)."""
        index = torch.tensor(list(order), dtype=torch.long).to(self.device)
        for start in range(0, len(index), batch_size):
            yield self.take(index[start : start + batch_size])


def _put(held: torch.Tensor, rows: torch.Tensor, start: int, key: str) -> torch.Tensor:
    """`held` (a key's tensor of all items, on the device) with `rows` the items' from `start` on.

    A `held` that is one value expanded to all items (stride 0) stays so while `rows` equal it;
    the first rows that differ give it a row per item (those before all being that value).
    """
    if rows.shape[1:] != held.shape[1:] or rows.dtype != held.dtype:
        raise SftkdError(f"dataset item {start}: {key!r} is {tuple(rows.shape[1:])} {rows.dtype}, item 0's "
                         f"{tuple(held.shape[1:])} {held.dtype}; a split on the device needs the same for every item")
    rows = rows.to(held.device)
    window = slice(start, start + len(rows))
    if held.stride(0) == 0:
        if torch.equal(rows, held[window]):
            return held
        held = held.contiguous()
    held[window].copy_(rows)
    return held


def device_bytes(dataset: Dataset) -> int:
    """The bytes a split's tensors take stacked, at most (from its first item; every item has
    the same shapes; a tensor the same for every item, such as a fixed mask, takes less: once)."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        return 0
    return len(dataset) * _item_bytes(dataset[0])  # type: ignore[arg-type]


def _item_bytes(item: dict[str, Any]) -> int:
    """The bytes of an item's tensors (TENSOR_KEYS)."""
    return sum(item[key].numel() * item[key].element_size() for key in TENSOR_KEYS)


def on_device(dataset: Dataset, device: torch.device, wanted: bool | None = None) -> Dataset:
    """`dataset` as a `DeviceDataset` on `device`, or as it is.

    `wanted` None (auto): on CUDA when the split `fits_on_device`; True: always (also on the
    CPU, where it is a stacked copy in memory: the tests compare it with the host path there);
    False: never.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        return dataset
    if wanted is None:
        wanted = device.type == "cuda" and fits_on_device(dataset, device)
    return DeviceDataset(dataset, device) if wanted else dataset


def fits_on_device(dataset: Dataset, device: torch.device) -> bool:
    """Whether the split takes at most MAX_DEVICE_FRACTION of the memory free on the GPU now
    (what other processes and the splits already there leave; this process's cached but unused
    memory counts as free)."""
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return device_bytes(dataset) <= MAX_DEVICE_FRACTION * (free + cached)
