"""Orthonormal 2-D FFT helpers over the last two axes, for torch tensors and numpy arrays.

No fftshift: as in the paper's code, the low frequencies sit at the array corners.
A centred layout is available with `centered=True` (ifftshift before, fftshift after): that is
fastMRI's fft2c / ifft2c. Complex images travel through the networks as two real channels
(real, imaginary): `to_channels` and `to_complex` convert between the two forms.
"""

from __future__ import annotations

import numpy as np
import torch

_DIMS = (-2, -1)


def fft2(x: torch.Tensor, centered: bool = False) -> torch.Tensor:
    """Orthonormal 2-D FFT of the last two dims (real or complex input, complex output)."""
    if centered:
        x = torch.fft.ifftshift(x, dim=_DIMS)
    k = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_DIMS) if centered else k


def ifft2(k: torch.Tensor, centered: bool = False) -> torch.Tensor:
    """Orthonormal inverse 2-D FFT of the last two dims (complex output)."""
    if centered:
        k = torch.fft.ifftshift(k, dim=_DIMS)
    x = torch.fft.ifft2(k, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS) if centered else x


def fft2_np(x: np.ndarray, centered: bool = False) -> np.ndarray:
    """numpy twin of `fft2`."""
    if centered:
        x = np.fft.ifftshift(x, axes=_DIMS)
    k = np.fft.fft2(x, axes=_DIMS, norm="ortho")
    return np.fft.fftshift(k, axes=_DIMS) if centered else k


def ifft2_np(k: np.ndarray, centered: bool = False) -> np.ndarray:
    """numpy twin of `ifft2`."""
    if centered:
        k = np.fft.ifftshift(k, axes=_DIMS)
    x = np.fft.ifft2(k, axes=_DIMS, norm="ortho")
    return np.fft.fftshift(x, axes=_DIMS) if centered else x


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """(B,2,H,W) real/imaginary channels -> (B,1,H,W) complex64 (computed in float32)."""
    return torch.complex(x[:, 0:1].float(), x[:, 1:2].float())


def to_channels(z: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) complex -> (B,2,H,W) real tensor [real, imaginary]."""
    return torch.cat([z.real, z.imag], dim=1)
