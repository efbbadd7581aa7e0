"""Data-consistency (DF) layer: hard replacement of the sampled k-space lines.

k = mask * y + (1 - mask) * FFT(x). For magnitude images (the paper's setting) the layer
returns the real part of IFFT(k), exactly as the paper's reference code (no learnable weight,
lambda -> infinity). For complex images, carried as two channels (real, imaginary), it keeps
the complex result: x = IFFT(k) as two channels, so every sampled k-space value is the
measured one (up to float rounding) and nothing is dropped.

The FFTs always run in float32 / complex64, also inside a mixed-precision (autocast) block:
the image is cast to float32 and autocast is switched off around the transforms, so the
layer returns float32 whatever precision the convolutions before it ran in. (A bf16 or fp16
FFT would lose the measured k-space values the layer exists to keep.)
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from sftkd_cli.mri.fft import fft2, ifft2, to_channels, to_complex


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A block where autocast is off for `x`'s device (nothing to switch off when it is not on)."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def data_consistency(
    x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, centered: bool = False
) -> torch.Tensor:
    """Replace the sampled k-space of real image `x` (B,1,H,W) by the measured `kspace`.

    `mask` is 0/1, broadcastable to `x` (e.g. (B,1,H,W) or (1,1,H,W)). Returns a real float32
    image (any input precision, autocast or not: see the module docstring).
    """
    with full_precision(x):
        k = fft2(x.float(), centered=centered)
        k = torch.where(mask.bool(), kspace, k)
        return ifft2(k, centered=centered).real


def complex_data_consistency(
    x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, centered: bool = False
) -> torch.Tensor:
    """Replace the sampled k-space of complex image `x` (B,2,H,W: real, imaginary) by `kspace`
    (B,1,H,W complex); returns the complex result as (B,2,H,W) float32 (real, imaginary).

    k = fft2c(x), k_dc = (1 - m) k + m k0, x = ifft2c(k_dc): `centered` is fastMRI's layout.
    """
    with full_precision(x):
        k = fft2(to_complex(x), centered=centered)  # to_complex computes in float32
        k = torch.where(mask.bool(), kspace, k)
        return to_channels(ifft2(k, centered=centered))


class DataConsistency(nn.Module):
    """Module form of the data consistency (so it shows up in model summaries and exports):
    `complex_values` picks `complex_data_consistency` (two-channel images), else `data_consistency`."""

    def __init__(self, centered: bool = False, complex_values: bool = False) -> None:
        super().__init__()
        self.centered = centered
        self.complex_values = complex_values

    def forward(self, x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.complex_values:
            return complex_data_consistency(x, kspace, mask, self.centered)
        return data_consistency(x, kspace, mask, self.centered)
