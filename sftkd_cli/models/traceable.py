"""Traceable forms of the trained networks, for `sftkd export` (TorchScript and ONNX).

The export interface is forward(zf (B,C,H,W), kspace (B,2,H,W) real/imaginary, mask (B,1,H,W)),
output (B,C,H,W): C = 1 for magnitude images, 2 (real, imaginary) for a model built for complex data.
A data-consistent cascade (DC-CNN, DC-UNet) keeps its trained blocks and swaps only its data
consistency: torch.fft for TorchScript (any size), or `MatmulDFT`, the orthonormal DFT as
matrix products with fixed DFT matrices, for ONNX (torch.fft does not export to ONNX). A network
without data consistency (VDSR) is wrapped as it is. Each family's `Family.exportable` picks one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from sftkd_cli.errors import SftkdError
from sftkd_cli.models.base import CascadeNet, DataConsistentCascade
from sftkd_cli.mri.dc import complex_data_consistency, data_consistency


def dft_matrix(n: int, inverse: bool = False, centered: bool = False) -> np.ndarray:
    """The orthonormal n-point DFT matrix (complex128): `M @ x` is the FFT of `x` along axis 0.

    Entries exp(-+2 pi i j k / n) / sqrt(n), with j*k reduced modulo n for accuracy. The inverse
    is the conjugate transpose. `centered` folds ifftshift (before) and fftshift (after) into it.
    """
    index = np.arange(n)
    phase = np.outer(index, index) % n
    sign = 1.0 if inverse else -1.0
    matrix = np.exp(sign * 2j * np.pi * phase / n) / math.sqrt(n)
    if centered:
        matrix = np.fft.fftshift(matrix @ np.fft.ifftshift(np.eye(n), axes=0), axes=0)
    return matrix


class MatmulDFT(nn.Module):
    """Orthonormal 2-D DFT of the last two axes as real matrix products (exports to ONNX MatMul).

    FFT(x) = F_H x F_W^T with F = Fr + i Fi; the inverse uses the conjugate matrices. Complex
    tensors are carried as (real, imaginary) pairs of float32 tensors.
    """

    def __init__(self, height: int, width: int, centered: bool = False) -> None:
        super().__init__()
        self.size = (height, width)
        for name, n, inverse, transpose in (
            ("h", height, False, False), ("w", width, False, True),
            ("ih", height, True, False), ("iw", width, True, True),
        ):
            m = dft_matrix(n, inverse, centered)
            m = m.T if transpose else m
            self.register_buffer(f"{name}_re", torch.tensor(m.real, dtype=torch.float32))
            self.register_buffer(f"{name}_im", torch.tensor(m.imag, dtype=torch.float32))

    def forward_real(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FFT of a real image: F_H x F_W^T as (real, imaginary)."""
        tr, ti = self.h_re @ x, self.h_im @ x
        return tr @ self.w_re - ti @ self.w_im, tr @ self.w_im + ti @ self.w_re

    def inverse_real(self, kr: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        """Real part of the inverse FFT of (kr + i ki)."""
        ur = self.ih_re @ kr - self.ih_im @ ki
        ui = self.ih_re @ ki + self.ih_im @ kr
        return ur @ self.iw_re - ui @ self.iw_im

    def forward(self, xr: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FFT of a complex image (xr + i xi) as (real, imaginary)."""
        tr = self.h_re @ xr - self.h_im @ xi
        ti = self.h_re @ xi + self.h_im @ xr
        return tr @ self.w_re - ti @ self.w_im, tr @ self.w_im + ti @ self.w_re

    def inverse(self, kr: torch.Tensor, ki: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse FFT of (kr + i ki) as (real, imaginary)."""
        ur = self.ih_re @ kr - self.ih_im @ ki
        ui = self.ih_re @ ki + self.ih_im @ kr
        return ur @ self.iw_re - ui @ self.iw_im, ur @ self.iw_im + ui @ self.iw_re


class ExportableDCCNN(nn.Module):
    """A trained data-consistent cascade (DC-CNN, DC-UNet) with a traceable interface:
    forward(zf, kspace (B,2,H,W) real, mask); zf and the output have the model's image channels
    (2, real and imaginary, for complex data, whose data consistency keeps the complex result).

    It reuses the model's blocks (same weights, same modules) and replaces only the data
    consistency: `dft="matmul"` uses `MatmulDFT` for a fixed `image_size` (ONNX), `dft="fft"`
    the library's torch.fft data consistency (TorchScript, any size).
    """

    def __init__(self, model: DataConsistentCascade, image_size: tuple[int, int] | None = None, dft: str = "matmul") -> None:
        super().__init__()
        if dft not in ("matmul", "fft"):
            raise SftkdError(f"dft {dft!r}: expected matmul or fft")
        if dft == "matmul" and image_size is None:
            raise SftkdError("image size: the matmul DFT needs a fixed image size (H, W)")
        self.blocks = model.blocks
        self.centered = bool(model.dc.centered)
        self.complex_values = bool(getattr(model.dc, "complex_values", False))
        self.dft_kind = dft
        self.image_size = tuple(image_size) if image_size is not None else None
        self.dft = MatmulDFT(*image_size, centered=self.centered) if dft == "matmul" else None

    def data_consistency(self, x: torch.Tensor, kspace: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """real(IFFT(where(mask, kspace, FFT(x)))), with k-space as (B,2,H,W) real/imaginary;
        for complex data IFFT(where(mask, kspace, FFT(x_re + i x_im))) as (real, imaginary)."""
        kr, ki = kspace[:, 0:1], kspace[:, 1:2]
        if self.dft is None:
            dc = complex_data_consistency if self.complex_values else data_consistency
            return dc(x, torch.complex(kr, ki), sampled, self.centered)
        if not self.complex_values:
            xr, xi = self.dft.forward_real(x)
            return self.dft.inverse_real(torch.where(sampled, kr, xr), torch.where(sampled, ki, xi))
        xr, xi = self.dft(x[:, 0:1], x[:, 1:2])
        ur, ui = self.dft.inverse(torch.where(sampled, kr, xr), torch.where(sampled, ki, xi))
        return torch.cat([ur, ui], dim=1)

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sampled = mask != 0
        x = zf
        for block in self.blocks:
            x = self.data_consistency(block(x), kspace, sampled)
        return x.contiguous()  # the real part of a complex tensor is a strided view: hand back a plain array


class ExportableDirect(nn.Module):
    """A trained network without data consistency (VDSR) behind the export interface
    forward(zf, kspace, mask): kspace and mask are passed on, unused by the network."""

    def __init__(self, model: CascadeNet) -> None:
        super().__init__()
        self.model = model
        self.centered = False

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(zf, kspace, mask)


def exportable_dc(model: CascadeNet, image_size: tuple[int, int], fixed: bool) -> nn.Module:
    """`Family.exportable` of a data-consistent cascade: matrix-product DFT for a fixed size, else torch.fft."""
    if not isinstance(model, DataConsistentCascade):
        raise SftkdError(f"{model.name}: not a data-consistent cascade, so it has no DC layers to export")
    return ExportableDCCNN(model, image_size, "matmul" if fixed else "fft")


def exportable_direct(model: CascadeNet, image_size: tuple[int, int], fixed: bool) -> nn.Module:
    """`Family.exportable` of a network without data consistency: the network as it is, any size."""
    return ExportableDirect(model)


def dc_architecture(model: DataConsistentCascade, depth: dict[str, int], fixed: bool) -> dict[str, Any]:
    """The model card's architecture record of a data-consistent cascade; `depth` says what a block
    holds (DC-CNN: {"layers": n}, DC-UNet: {"levels": L})."""
    if model.acquisition.values == "complex":
        dc = ("hard, after every block, complex: IFFT(where(mask, kspace, FFT(x_re + i x_im))) kept as "
              "(real, imaginary), orthonormal")
    else:
        dc = "hard, after every block: real(IFFT(where(mask, kspace, FFT(x)))), orthonormal"
    record = {"name": model.name, **depth, "cascades": model.cascades,
              "channels": model.channels, "pad": model.blocks[0].pad, "kernel": 3, "data_consistency": dc,
              "dft": "matrix products with fixed DFT matrices" if fixed else "torch.fft"}
    if model.acquisition.values == "complex":  # magnitude cards keep their keys as they were
        record["image_channels"] = model.acquisition.channels
        record["values"] = "complex"
    return record
