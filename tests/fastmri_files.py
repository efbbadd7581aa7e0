"""Small synthetic files in the fastMRI format, written with h5py, for tests.

A fastMRI single-coil knee file holds:
- `kspace`: complex64 (slices, H, W), centred (fftshifted) k-space, e.g. 640 x 368;
- `reconstruction_esc`: float32 (slices, 320, 320), the magnitude of the centred orthonormal
  inverse FFT of the fully sampled k-space, centre-cropped;
- attrs `max` (max of reconstruction_esc over the volume), `norm` (its L2 norm over the
  volume), `acquisition` (CORPD_FBK or CORPDFS_FBK), `patient_id`.
A multi-coil file holds `kspace` (slices, coils, H, W) and `reconstruction_rss` instead.

The images have a known complex phase: image = phantom magnitude x exp(i * phase(x, y)) with a
smooth phase ramp, so tests can check that the real and imaginary parts survive (a pipeline
that kept only the magnitude would lose the phase). `image_of(path, i)` gives the exact complex
image of slice i. fastMRI's scale is kept (k-space values ~1e-5..1e-3: `SCALE`).

Helpers:
- `write_singlecoil(path, slices, shape, crop, acquisition, seed)` -> path
- `write_multicoil(path, slices, coils, shape, crop, seed)` -> path
- `write_folder(root, files, ...)` -> the paths of `files` single-coil files (acquisitions alternate)
- `complex_image(shape, seed, slice_index)`, `center_crop(x, crop)`, `pad_to(x, crop)`, `fft2c(x)`, `ifft2c(k)`
A `crop` wider or taller than `shape` gives fastMRI's target of a narrow image: the magnitude
zero-padded to the crop, then centre-cropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

#: typical magnitude of fastMRI knee image values (their k-space is of the same order)
SCALE = 1e-4
ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK")


def fft2c(x: np.ndarray) -> np.ndarray:
    """fastMRI's fft2c over the last two axes: ifftshift -> orthonormal fft2 -> fftshift."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def ifft2c(k: np.ndarray) -> np.ndarray:
    """fastMRI's ifft2c over the last two axes: ifftshift -> orthonormal ifft2 -> fftshift."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), axes=axes, norm="ortho"), axes=axes)


def center_crop(x: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """fastMRI's centre crop of the last two axes (start = (size - crop) // 2)."""
    h, w = x.shape[-2:]
    top, left = (h - crop[0]) // 2, (w - crop[1]) // 2
    return x[..., top:top + crop[0], left:left + crop[1]]


def pad_to(x: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Zero-pad the last two axes to at least `crop`, the centre pixel (n // 2, where ifft2c puts the
    image centre) moved to crop // 2: a narrow image padded before fastMRI's centre crop."""
    pads = [(0, 0)] * (x.ndim - 2) + [(c // 2 - n // 2, c - n - (c // 2 - n // 2)) if n < c else (0, 0)
                                      for n, c in zip(x.shape[-2:], crop)]
    return np.pad(x, pads)


def complex_image(shape: tuple[int, int], seed: int = 0, slice_index: int = 0) -> np.ndarray:
    """A complex128 (H, W) image: an ellipse phantom (brightness varying with seed and slice, small
    inner ellipse, a little noise) times exp(i * phase), phase a smooth ramp in x and y."""
    h, w = shape
    rng = np.random.default_rng([seed, slice_index])
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    outer = (x / 0.8) ** 2 + (y / 0.7) ** 2 <= 1.0
    inner = ((x - 0.2) / 0.25) ** 2 + ((y + 0.1) / 0.3) ** 2 <= 1.0
    magnitude = outer * (1.0 + 0.3 * np.sin(slice_index + seed)) + inner * 0.8
    magnitude = magnitude + 0.02 * rng.random((h, w)) * outer
    phase = 0.6 * np.pi * x + 0.3 * np.pi * y + 0.2 * (seed % 5)
    return SCALE * magnitude * np.exp(1j * phase)


def _slices(shape: tuple[int, int], slices: int, seed: int) -> np.ndarray:
    return np.stack([complex_image(shape, seed, i) for i in range(slices)])


def write_singlecoil(path: Path | str, slices: int = 3, shape: tuple[int, int] = (40, 32),
                     crop: tuple[int, int] = (24, 24), acquisition: str = "CORPD_FBK", seed: int = 0,
                     patient_id: str | None = None) -> Path:
    """Write one single-coil fastMRI-format file (parents created) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _slices(shape, slices, seed)
    kspace = fft2c(images).astype(np.complex64)
    target = center_crop(pad_to(np.abs(ifft2c(kspace.astype(np.complex128))), crop), crop).astype(np.float32)
    return _write(path, kspace, "reconstruction_esc", target, acquisition, patient_id or f"synthetic{seed:04d}")


def write_multicoil(path: Path | str, slices: int = 2, coils: int = 4, shape: tuple[int, int] = (40, 32),
                    crop: tuple[int, int] = (24, 24), acquisition: str = "CORPD_FBK", seed: int = 0) -> Path:
    """Write one multi-coil fastMRI-format file (kspace (slices, coils, H, W), reconstruction_rss)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _slices(shape, slices, seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    angles = np.linspace(0, 2 * np.pi, coils, endpoint=False)
    sens = np.stack([np.exp(-((x - 0.7 * np.cos(a)) ** 2 + (y - 0.7 * np.sin(a)) ** 2)) for a in angles])
    coil_images = images[:, None] * sens[None]
    kspace = fft2c(coil_images).astype(np.complex64)
    rss = np.sqrt((np.abs(ifft2c(kspace.astype(np.complex128))) ** 2).sum(axis=1))
    target = center_crop(rss, crop).astype(np.float32)
    return _write(path, kspace, "reconstruction_rss", target, acquisition, f"synthetic-mc{seed:04d}")


def _write(path: Path, kspace: np.ndarray, target_name: str, target: np.ndarray, acquisition: str,
           patient_id: str) -> Path:
    """The file as fastMRI writes it: k-space, the target image, attrs max, norm, acquisition, patient_id."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset(target_name, data=target)
        f.attrs["max"] = float(target.max())
        f.attrs["norm"] = float(np.linalg.norm(target))
        f.attrs["acquisition"] = acquisition
        f.attrs["patient_id"] = patient_id
    return path


def write_folder(root: Path | str, files: int = 4, slices: int = 3, shape: tuple[int, int] = (40, 32),
                 crop: tuple[int, int] = (24, 24), acquisitions: Sequence[str] = ACQUISITIONS,
                 prefix: str = "file") -> list[Path]:
    """Write `files` single-coil files `<prefix>NNNN.h5` (seed = index; acquisitions alternate)."""
    root = Path(root)
    return [write_singlecoil(root / f"{prefix}{i:04d}.h5", slices=slices, shape=shape, crop=crop,
                             acquisition=acquisitions[i % len(acquisitions)], seed=i)
            for i in range(files)]


def image_of(path: Path | str, slice_index: int) -> np.ndarray:
    """The complex128 fully sampled image of one slice of a written file (ifft2c of its k-space)."""
    with h5py.File(path, "r") as f:
        return ifft2c(f["kspace"][slice_index].astype(np.complex128))
