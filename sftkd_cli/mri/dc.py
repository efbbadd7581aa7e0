"""Data-consistency (DF) layer: hard replacement of the sampled k-space lines.

k = mask * y + (1 - mask) * FFT(x); the layer returns the real part of IFFT(k),
exactly as the paper's reference code (no learnable weight, lambda -> infinity).
"""

from __future__ import annotations

import torch
from torch import nn

from sftkd_cli.mri.fft import fft2, ifft2


def data_consistency(
    x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, centered: bool = False
) -> torch.Tensor:
    """Replace the sampled k-space of real image `x` (B,1,H,W) by the measured `kspace`.

    `mask` is 0/1, broadcastable to `x` (e.g. (B,1,H,W) or (1,1,H,W)). Returns a real image.
    """
    k = fft2(x.float(), centered=centered)
    k = torch.where(mask.bool(), kspace, k)
    return ifft2(k, centered=centered).real


class DataConsistency(nn.Module):
    """Module form of `data_consistency` so it shows up in model summaries and exports."""

    def __init__(self, centered: bool = False) -> None:
        super().__init__()
        self.centered = centered

    def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return data_consistency(x, kspace, mask, self.centered)
