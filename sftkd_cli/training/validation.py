"""Training's validation between epochs: L1, PSNR and SSIM scored on the training device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sftkd_cli.runtime import autocast, collate, slice_batches, to_device
from sftkd_cli.torch_metrics import SliceScores, magnitude
from sftkd_cli.training.graphs import Reconstructor
from sftkd_cli.training.objectives import Objective


def validate(objective: Objective, dataset: Dataset, device: torch.device, amp: str, batch_size: int,
             forward: Reconstructor | None = None) -> dict[str, float]:
    """Validation L1, PSNR and SSIM, means over slices; PSNR and SSIM scored as `sftkd evaluate` does.

    PSNR and SSIM use data range = the maximum of the slice's ground-truth volume (over its
    validated slices: the whole volume unless data.max_val_slices cuts it short), in float64,
    like `evaluate`'s per-slice means (metrics.score_slices). So the log's val_psnr / val_ssim
    of an epoch equal metrics.json's PSNR / SSIM "mean" for that epoch's checkpoint on the
    same split, when training ran in evaluate's precision (train.amp off, train.tf32 false;
    otherwise validation runs the forward pass in training's). (Volumes are normalised by their
    source maximum, and a crop or skipped slices can leave the stored maximum below 1, so a
    range of 1 would read higher.) Complex data (two
    channels) is scored on the magnitudes, as evaluate's default (paper) convention scores it;
    its L1 is the training loss's, over both channels. Everything is scored on `device`
    (torch_metrics): only the three means come back to the host, at the end. `forward`: the
    objective's predictor as run (e.g. replayed from CUDA graphs: `graphed_reconstructor`).
    """
    if forward is None:
        forward = objective.predictor()
    objective.eval()
    l1_sum = torch.zeros((), dtype=torch.float64, device=device)
    scores = SliceScores()
    with torch.inference_mode():
        for items in slice_batches(dataset, batch_size):
            batch = to_device(collate(items), device)
            with autocast(device, amp):
                pred = forward(batch["zf"], batch["kspace"], batch["mask"])
            pred, target = pred.to(torch.float32, copy=True), batch["target"]  # a graph's next replay overwrites its output
            l1_sum += F.l1_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)).sum(dtype=torch.float64)
            for item, t, p in zip(items, magnitude(target), magnitude(pred)):
                scores.add(str(item["volume"]), t, p)
    objective.train()
    means = scores.means()
    return {"val_l1": l1_sum.item() / len(dataset), "val_psnr": means["PSNR"], "val_ssim": means["SSIM"]}
