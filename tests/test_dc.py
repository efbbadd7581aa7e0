"""Data-consistency layer against a numpy oracle, both k-space layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sftkd_cli.mri.dc import DataConsistency, data_consistency
from sftkd_cli.mri.masks import make_mask, undersample

torch.set_num_threads(1)

AXES = (-2, -1)


def _np_fft(x: np.ndarray, centered: bool) -> np.ndarray:
    if centered:
        return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=AXES), axes=AXES, norm="ortho"), axes=AXES)
    return np.fft.fft2(x, axes=AXES, norm="ortho")


def _np_ifft(k: np.ndarray, centered: bool) -> np.ndarray:
    if centered:
        return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=AXES), axes=AXES, norm="ortho"), axes=AXES)
    return np.fft.ifft2(k, axes=AXES, norm="ortho")


def _case(shape: tuple[int, int], centered: bool, seed: int = 0):
    """A target image, its masked k-space, a mask (1,1,H,W) and a network output x (B,1,H,W)."""
    rng = np.random.default_rng(seed)
    target = rng.random((2, 1) + shape).astype(np.float32)
    x = rng.random((2, 1) + shape).astype(np.float32)
    mask = make_mask("random", shape, 4, seed=seed, layout="centered" if centered else "corner")
    kspace, _ = undersample(target[:, 0], mask, centered=centered)
    return target, x, mask[None, None], kspace[:, None]


def _hermitian_partner(k: np.ndarray, centered: bool) -> np.ndarray:
    """conj(k) at the mirrored frequency -f, for every frequency f (last two axes)."""
    corner = np.fft.ifftshift(k, axes=AXES) if centered else k
    mirrored = np.conj(np.roll(np.flip(corner, axis=AXES), 1, axis=AXES))  # index i -> (-i) mod N
    return np.fft.fftshift(mirrored, axes=AXES) if centered else mirrored


def _symmetric(mask: np.ndarray, centered: bool) -> np.ndarray:
    """The mask OR its point mirror in k-space (sampled at f  <=>  sampled at -f)."""
    partner = np.abs(_hermitian_partner(mask.astype(np.complex128), centered))
    return np.maximum(mask, partner).astype(np.float32)


@pytest.mark.parametrize("shape", [(16, 12), (15, 9)])
@pytest.mark.parametrize("centered", [False, True])
def test_matches_numpy_oracle(shape, centered):
    _, x, mask, y = _case(shape, centered)
    out = data_consistency(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask), centered)
    assert out.dtype == torch.float32 and out.shape == x.shape
    oracle = _np_ifft(mask * y + (1 - mask) * _np_fft(x, centered), centered).real
    np.testing.assert_allclose(out.numpy(), oracle, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 12), (15, 9)])
@pytest.mark.parametrize("centered", [False, True])
def test_exact_on_sampled_lines_for_symmetric_mask(shape, centered):
    """y from a real image and a mask closed under f -> -f: FFT(output) == y where mask = 1."""
    _, x, mask, _ = _case(shape, centered)
    target = np.random.default_rng(9).random((2, 1) + shape).astype(np.float32)
    mask = _symmetric(mask, centered)
    y = (mask * _np_fft(target.astype(np.float64), centered)).astype(np.complex64)
    out = data_consistency(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask), centered)
    k_out = _np_fft(out.numpy().astype(np.float64), centered)
    sampled = np.broadcast_to(mask, k_out.shape) == 1
    np.testing.assert_allclose(k_out[sampled], y[sampled], atol=1e-5)


@pytest.mark.parametrize("centered", [False, True])
def test_real_part_averages_with_mirror_line_for_asymmetric_mask(centered):
    """Keeping the real part (as the paper's code) makes FFT(output) = (k(f) + conj(k(-f))) / 2.

    So with a mask that samples f but not -f, the measured value is only half-kept there.
    """
    _, x, mask, y = _case((16, 12), centered)
    out = data_consistency(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask), centered)
    k = mask * y + (1 - mask) * _np_fft(x.astype(np.float64), centered)
    expected = (k + _hermitian_partner(k, centered)) / 2
    k_out = _np_fft(out.numpy().astype(np.float64), centered)
    np.testing.assert_allclose(k_out, expected, atol=1e-5)
    assert not np.allclose(mask, _symmetric(mask, centered))  # the case is really asymmetric
    sampled = np.broadcast_to(mask, k_out.shape) == 1
    assert np.abs(k_out[sampled] - y[sampled]).max() > 1e-2


@pytest.mark.parametrize("centered", [False, True])
def test_full_mask_gives_real_part_of_measurements(centered):
    rng = np.random.default_rng(3)
    y = (rng.standard_normal((1, 1, 8, 7)) + 1j * rng.standard_normal((1, 1, 8, 7))).astype(np.complex64)
    x = rng.random((1, 1, 8, 7)).astype(np.float32)
    ones = torch.ones(1, 1, 8, 7)
    out = data_consistency(torch.from_numpy(x), torch.from_numpy(y), ones, centered)
    np.testing.assert_allclose(out.numpy(), _np_ifft(y, centered).real, atol=1e-5)


@pytest.mark.parametrize("centered", [False, True])
def test_zero_mask_returns_input(centered):
    x = torch.rand(1, 1, 9, 6)
    y = torch.zeros(1, 1, 9, 6, dtype=torch.complex64)
    out = data_consistency(x, y, torch.zeros(1, 1, 9, 6), centered)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("centered", [False, True])
def test_module_equals_function_and_backpropagates(centered):
    _, x, mask, y = _case((10, 8), centered, seed=4)
    xt = torch.from_numpy(x).requires_grad_(True)
    layer = DataConsistency(centered=centered)
    out = layer(xt, torch.from_numpy(y), torch.from_numpy(mask))
    ref = data_consistency(xt, torch.from_numpy(y), torch.from_numpy(mask), centered)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert xt.grad is not None and torch.isfinite(xt.grad).all()


@pytest.mark.parametrize("shape", [(12, 10), (11, 9)])
@pytest.mark.parametrize("centered", [False, True])
def test_undersample_zero_filled_oracle(shape, centered):
    image = np.random.default_rng(5).random((2,) + shape).astype(np.float32)
    mask = make_mask("equispaced", shape, 3, layout="centered" if centered else "corner")
    kspace, zf = undersample(image, mask, centered=centered)
    oracle = np.abs(_np_ifft(mask * _np_fft(image.astype(np.float64), centered), centered))
    np.testing.assert_allclose(zf, oracle, atol=1e-5)
    np.testing.assert_allclose(kspace, mask * _np_fft(image.astype(np.float64), centered), atol=1e-5)


@pytest.mark.parametrize("centered", [False, True])
def test_dc_of_measurements_from_target_is_exact(centered):
    """With y = mask * FFT(target) of a real image, DC of the target itself returns the target."""
    target, _, mask, y = _case((14, 10), centered, seed=6)
    out = data_consistency(torch.from_numpy(target), torch.from_numpy(y), torch.from_numpy(mask), centered)
    np.testing.assert_allclose(out.numpy(), target, atol=1e-5)
