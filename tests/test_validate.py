"""Training's validation (training.validation.validate) scores on the device what the numpy metrics score.

The oracle is validate as it was before it moved to the device: every prediction copied to the
host and scored with metrics.psnr / metrics.ssim (float64, data range = the maximum of the slice's
ground-truth volume over its validated slices, complex data on magnitudes).
Device: the CPU, except the `cuda`-marked test (a CUDA GPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli.errors import SftkdError
from sftkd_cli.metrics import magnitude, psnr, ssim
from sftkd_cli.runtime import collate
from sftkd_cli.training.validation import validate

torch.set_num_threads(1)


class Volumes(torch.utils.data.Dataset):
    """Items like SliceDataset's: volumes of 3, 1 and 2 slices (11x9) with different maxima."""

    def __init__(self, channels: int = 1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for volume, count, top in (("a", 3, 0.6), ("b", 1, 1.0), ("c", 2, 0.3)):
            for s in range(count):
                target = top * torch.rand(channels, 11, 9, generator=g)
                zf = target + 0.1 * torch.randn(target.shape, generator=g)
                self.items.append({"target": target, "zf": zf, "kspace": torch.zeros(1, 11, 9, dtype=torch.complex64),
                                   "mask": torch.ones(1, 11, 9), "volume": volume, "slice": s})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class Shrink(nn.Module):
    """An objective whose predictor is a learned scale of the input (all validate needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.9))

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.scale * zf

    def predictor(self) -> nn.Module:
        return self

    def predict(self, batch: dict) -> torch.Tensor:
        return self(batch["zf"], batch["kspace"], batch["mask"])


def _numpy_validate(objective: Shrink, dataset: Volumes, batch_size: int) -> dict[str, float]:
    """validate before it scored on the device (the oracle)."""
    l1s: list[float] = []
    volumes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate(items)
            pred, target = objective.predict(batch).float(), batch["target"]
            l1s.extend(F.l1_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)).tolist())
            for item, t, p in zip(items, target.numpy(), pred.numpy()):
                volumes.setdefault(str(item["volume"]), []).append((magnitude(t), magnitude(p)))
    psnrs, ssims = [], []
    for pairs in volumes.values():
        data_range = max(float(t.max()) for t, _ in pairs)
        psnrs.extend(psnr(t, p, data_range) for t, p in pairs)
        ssims.extend(ssim(t, p, data_range) for t, p in pairs)
    return {"val_l1": float(np.mean(l1s)), "val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims))}


def _close(ours: dict[str, float], oracle: dict[str, float], complex_values: bool, l1_rel: float = 1e-12) -> None:
    assert ours.keys() == oracle.keys()
    assert ours["val_l1"] == pytest.approx(oracle["val_l1"], rel=l1_rel)
    # complex: numpy's complex64 |x| is within 1 ulp of torch's correctly rounded one
    assert ours["val_psnr"] == pytest.approx(oracle["val_psnr"], abs=1e-5 if complex_values else 1e-9)
    assert ours["val_ssim"] == pytest.approx(oracle["val_ssim"], abs=1e-7 if complex_values else 1e-12)


@pytest.mark.parametrize("channels", [1, 2], ids=["magnitude", "complex"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_validate_equals_the_numpy_scores(channels, batch_size):
    objective, dataset = Shrink(), Volumes(channels)
    ours = validate(objective, dataset, torch.device("cpu"), "off", batch_size)
    _close(ours, _numpy_validate(objective, dataset, batch_size), channels == 2)
    assert objective.training  # validate hands the objective back in training mode


def test_validate_refuses_a_prediction_with_nan():
    objective, dataset = Shrink(), Volumes()
    dataset.items[4]["zf"] = dataset.items[4]["zf"].clone()
    dataset.items[4]["zf"][0, 3, 3] = float("nan")
    with pytest.raises(SftkdError, match="pred contains NaN or inf"):
        validate(objective, dataset, torch.device("cpu"), "off", 2)


@pytest.mark.cuda
def test_validate_on_cuda_equals_the_numpy_scores():
    """Device: a CUDA GPU; the objective is elementwise, so no TF32 or cuDNN rounding enters, but
    each slice's float32 L1 mean is summed in the GPU's order (about 2e-7 relative apart)."""
    for channels in (1, 2):
        objective, dataset = Shrink(), Volumes(channels)
        ours = validate(objective.cuda(), dataset, torch.device("cuda"), "off", 4)
        _close(ours, _numpy_validate(objective.cpu(), dataset, 4), channels == 2, l1_rel=1e-6)
