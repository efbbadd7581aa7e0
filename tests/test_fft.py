"""FFT helpers against numpy.fft (orthonormal), torch and numpy twins, both layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sftkd_cli.mri.fft import fft2, fft2_np, ifft2, ifft2_np

torch.set_num_threads(1)

SHAPES = [(8, 8), (6, 10), (7, 7), (5, 9), (2, 3, 7, 6)]


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def _kspace(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _oracle_fft(x: np.ndarray, centered: bool) -> np.ndarray:
    """Independent orthonormal FFT: unnormalised numpy FFT divided by sqrt(H*W), explicit shifts."""
    h, w = x.shape[-2:]
    if centered:
        x = np.fft.ifftshift(x, axes=(-2, -1))
    k = np.fft.fft2(x, axes=(-2, -1)) / np.sqrt(h * w)
    return np.fft.fftshift(k, axes=(-2, -1)) if centered else k


def _oracle_ifft(k: np.ndarray, centered: bool) -> np.ndarray:
    h, w = k.shape[-2:]
    if centered:
        k = np.fft.ifftshift(k, axes=(-2, -1))
    x = np.fft.ifft2(k, axes=(-2, -1)) * np.sqrt(h * w)
    return np.fft.fftshift(x, axes=(-2, -1)) if centered else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("centered", [False, True])
def test_numpy_twins_match_oracle(shape, centered):
    x = _image(shape)
    k = _kspace(shape)
    np.testing.assert_allclose(fft2_np(x, centered=centered), _oracle_fft(x, centered), atol=1e-12)
    np.testing.assert_allclose(ifft2_np(k, centered=centered), _oracle_ifft(k, centered), atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("centered", [False, True])
def test_torch_matches_oracle(shape, centered):
    x = _image(shape)
    k = _kspace(shape)
    got_k = fft2(torch.from_numpy(x.astype(np.float32)), centered=centered)
    got_x = ifft2(torch.from_numpy(k.astype(np.complex64)), centered=centered)
    assert got_k.dtype == torch.complex64
    np.testing.assert_allclose(got_k.numpy(), _oracle_fft(x, centered), atol=1e-5)
    np.testing.assert_allclose(got_x.numpy(), _oracle_ifft(k, centered), atol=1e-5)


def test_default_is_corner_layout():
    x = _image((6, 5))
    k = fft2_np(x)
    assert np.isclose(k[0, 0], x.sum() / np.sqrt(x.size))  # DC at index (0, 0)
    kc = fft2_np(x, centered=True)
    # centered: DC at (H//2, W//2) for a signal whose origin is also at the centre
    assert np.isclose(kc[3, 2], x.sum() / np.sqrt(x.size))


def test_centered_equals_explicit_shifts():
    for shape in [(8, 8), (7, 9)]:
        x = _image(shape)
        expected = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x), norm="ortho"))
        np.testing.assert_allclose(fft2_np(x, centered=True), expected, atol=1e-12)
        t = fft2(torch.from_numpy(x), centered=True).numpy()
        np.testing.assert_allclose(t, expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (7, 5), (3, 6, 9)])
@pytest.mark.parametrize("centered", [False, True])
def test_round_trip(shape, centered):
    x = _image(shape)
    np.testing.assert_allclose(ifft2_np(fft2_np(x, centered), centered).real, x, atol=1e-12)
    xt = torch.from_numpy(x.astype(np.float32))
    back = ifft2(fft2(xt, centered), centered)
    np.testing.assert_allclose(back.real.numpy(), x, atol=1e-5)
    assert np.abs(back.imag.numpy()).max() < 1e-5


@pytest.mark.parametrize("shape", [(8, 8), (7, 5)])
@pytest.mark.parametrize("centered", [False, True])
def test_parseval(shape, centered):
    x = _image(shape)
    energy = np.sum(x**2)
    assert np.isclose(np.sum(np.abs(fft2_np(x, centered)) ** 2), energy)
    kt = fft2(torch.from_numpy(x), centered)
    assert np.isclose(float((kt.abs() ** 2).sum()), energy)


def test_only_last_two_axes_transformed():
    x = _image((2, 3, 4, 5))
    k = fft2(torch.from_numpy(x)).numpy()
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(k[i, j], np.fft.fft2(x[i, j], norm="ortho"), atol=1e-12)
