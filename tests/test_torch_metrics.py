"""PSNR and SSIM on torch tensors (torch_metrics) against scikit-image, the oracle metrics.py uses.

Device: the CPU, except the `cuda`-marked test (a CUDA GPU: the same scores computed there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sftkd_cli import metrics, torch_metrics
from sftkd_cli.errors import SftkdError

torch.set_num_threads(1)


def _random(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random ground truth in [0, 1) and a noisy prediction of it (not clipped)."""
    rng = np.random.default_rng(seed)
    gt = rng.random(shape)
    return gt, gt + 0.1 * rng.standard_normal(shape)


def _phantom(step: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shepp-Logan (flat regions, sharp edges) subsampled by `step`, and a blurred, noisy copy."""
    gt = shepp_logan_phantom()[::step, ::step]
    rng = np.random.default_rng(seed)
    blurred = (gt + np.roll(gt, 1, axis=0) + np.roll(gt, 1, axis=1)) / 3
    return gt, blurred + 0.02 * rng.standard_normal(gt.shape)


IMAGES = {
    "random 7x7": _random((7, 7), 0),
    "random 8x9": _random((8, 9), 1),
    "random 33x20": _random((33, 20), 2),
    "phantom 50x50": _phantom(8, 3),
    "phantom 27x27": _phantom(15, 4),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("scale", [1.0, 0.3, 255.0])
def test_ssim_and_psnr_equal_scikit_image(name, scale):
    gt, pred = (a * scale for a in IMAGES[name])
    for data_range in (scale, 1.7 * scale):  # the image's range, and a range above it (a volume's maximum)
        g, p = torch.from_numpy(gt), torch.from_numpy(pred)
        ours_ssim = torch_metrics.ssim(g, p, data_range)
        ours_psnr = torch_metrics.psnr(g, p, data_range)
        assert ours_ssim.dtype == ours_psnr.dtype == torch.float64 and ours_ssim.shape == ()
        assert float(ours_ssim) == pytest.approx(structural_similarity(gt, pred, data_range=data_range), abs=1e-5)
        assert float(ours_psnr) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=data_range), abs=1e-5)
        # and metrics.py's own functions (the conventions validate and evaluate share)
        assert float(ours_ssim) == pytest.approx(metrics.ssim(gt, pred, data_range), abs=1e-5)
        assert float(ours_psnr) == pytest.approx(metrics.psnr(gt, pred, data_range), abs=1e-5)


def test_batches_of_slices_with_one_range_each_equal_the_slices_one_by_one():
    gt, pred = _random((2, 3, 12, 10), 5)
    gt[1] *= 0.4
    pred[1] *= 0.4
    ranges = torch.tensor([[1.0, 1.2, 0.9], [0.4, 0.5, 0.45]], dtype=torch.float64)
    ours_ssim = torch_metrics.ssim(torch.from_numpy(gt), torch.from_numpy(pred), ranges)
    ours_psnr = torch_metrics.psnr(torch.from_numpy(gt), torch.from_numpy(pred), ranges)
    assert ours_ssim.shape == ours_psnr.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            r = float(ranges[i, j])
            assert float(ours_ssim[i, j]) == pytest.approx(structural_similarity(gt[i, j], pred[i, j], data_range=r), abs=1e-5)
            assert float(ours_psnr[i, j]) == pytest.approx(peak_signal_noise_ratio(gt[i, j], pred[i, j], data_range=r), abs=1e-5)


@pytest.mark.parametrize("per_chunk", [1, 4])
def test_ssim_in_chunks_of_images_equals_ssim_at_once(monkeypatch, per_chunk):
    gt, pred = (torch.from_numpy(a) for a in _random((2, 3, 12, 10), 13))
    ranges = torch.linspace(0.8, 1.3, 6, dtype=torch.float64).reshape(2, 3)
    at_once = torch_metrics.ssim(gt, pred, ranges)
    monkeypatch.setattr(torch_metrics, "_images_per_chunk", lambda device, pixels: per_chunk)
    torch.testing.assert_close(torch_metrics.ssim(gt, pred, ranges), at_once, rtol=0, atol=1e-15)


def test_float32_images_are_scored_in_float64():
    gt, pred = (a.astype(np.float32) for a in _phantom(8, 6))
    ours = torch_metrics.ssim(torch.from_numpy(gt), torch.from_numpy(pred), 1.0)
    assert ours.dtype == torch.float64
    assert float(ours) == pytest.approx(metrics.ssim(gt, pred, 1.0), abs=1e-12)


def test_identical_images_give_infinite_psnr_and_ssim_one():
    gt, _ = _random((9, 9), 7)
    g = torch.from_numpy(gt)
    assert float(torch_metrics.psnr(g, g.clone(), 1.0)) == float("inf") == metrics.psnr(gt, gt, 1.0)
    assert float(torch_metrics.ssim(g, g.clone(), 1.0)) == pytest.approx(1.0, abs=1e-12)


def test_magnitude_equals_metrics_magnitude():
    rng = np.random.default_rng(8)
    images = rng.standard_normal((3, 2, 9, 7)).astype(np.float32)
    ours = torch_metrics.magnitude(torch.from_numpy(images))
    assert ours.dtype == torch.float32 and ours.shape == (3, 9, 7)
    exact = np.sqrt(images[:, 0].astype(np.float64) ** 2 + images[:, 1].astype(np.float64) ** 2)
    np.testing.assert_array_equal(ours.numpy(), exact.astype(np.float32))  # |x| rounded once, to float32
    for i in range(3):  # numpy's complex64 abs is within 1 ulp of that, not always equal
        np.testing.assert_allclose(ours[i].numpy(), metrics.magnitude(images[i]), rtol=2.5e-7, atol=0)
    one = torch.from_numpy(images[:, :1])
    assert torch.equal(torch_metrics.magnitude(one), one[:, 0])


@pytest.mark.parametrize("call, words", [
    (lambda: torch_metrics.ssim(torch.zeros(6, 9), torch.zeros(6, 9), 1.0), "at least 7x7"),
    (lambda: torch_metrics.psnr(torch.zeros(8, 8), torch.zeros(8, 9), 1.0), "expected equal shapes"),
    (lambda: torch_metrics.psnr(torch.zeros(8, 8), torch.zeros(8, 8), 0.0), "data_range 0.0"),
    (lambda: torch_metrics.ssim(torch.zeros(8, 8), torch.zeros(8, 8), float("inf")), "expected a finite value > 0"),
    (lambda: torch_metrics.ssim(torch.zeros(8, 8, dtype=torch.complex64), torch.zeros(8, 8, dtype=torch.complex64), 1.0),
     "take the magnitude"),
    (lambda: torch_metrics.magnitude(torch.zeros(2, 3, 8, 8)), "1 or 2 channels"),
])
def test_bad_input_is_one_clear_line(call, words):
    with pytest.raises(SftkdError, match=words):
        call()


def _slices(seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Slices of three volumes (4, 1 and 2 slices) of different maxima, as (volume, target, pred)."""
    rng = np.random.default_rng(seed)
    out = []
    for volume, count, top in (("a", 4, 1.0), ("b", 1, 0.35), ("c", 2, 0.8)):
        for _ in range(count):
            target = (top * rng.random((11, 9))).astype(np.float32)
            out.append((volume, target, (target + 0.05 * rng.standard_normal(target.shape)).astype(np.float32)))
    return out


def _numpy_means(slices: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The oracle: metrics.psnr / metrics.ssim per slice, data range = the volume's target maximum."""
    ranges: dict[str, float] = {}
    for volume, target, _ in slices:
        ranges[volume] = max(ranges.get(volume, 0.0), float(target.max()))
    return {"PSNR": float(np.mean([metrics.psnr(t, p, ranges[v]) for v, t, p in slices])),
            "SSIM": float(np.mean([metrics.ssim(t, p, ranges[v]) for v, t, p in slices]))}


def _scored(slices, device: str = "cpu") -> dict[str, float]:
    scores = torch_metrics.SliceScores()
    for volume, target, pred in slices:
        scores.add(volume, torch.from_numpy(target).to(device), torch.from_numpy(pred).to(device))
    return scores.means()


def test_slice_scores_use_each_volumes_maximum_as_the_range():
    slices = _slices(9)
    ours, oracle = _scored(slices), _numpy_means(slices)
    assert ours["PSNR"] == pytest.approx(oracle["PSNR"], abs=1e-9)
    assert ours["SSIM"] == pytest.approx(oracle["SSIM"], abs=1e-12)
    one_range = {"PSNR": float(np.mean([metrics.psnr(t, p, 1.0) for _, t, p in slices]))}
    assert abs(ours["PSNR"] - one_range["PSNR"]) > 0.5  # the per-volume range matters here


def test_slice_scores_refuse_what_metrics_refuse_and_interleaved_volumes():
    slices = _slices(10)
    with pytest.raises(SftkdError, match="volume 'a' continues after"):
        _scored([*slices[:2], slices[4], slices[2]])
    zero = [("z", np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)), *slices]
    with pytest.raises(SftkdError, match="volume maximum 0: expected > 0"):
        _scored(zero)
    broken = [(v, t, p.copy()) for v, t, p in slices]
    broken[3][2][2, 2] = np.nan
    with pytest.raises(SftkdError, match="pred contains NaN or inf"):
        _scored(broken)
    with pytest.raises(SftkdError, match="no slices"):
        torch_metrics.SliceScores().means()


@pytest.mark.cuda
def test_on_cuda_the_scores_are_the_cpus():
    """Device: a CUDA GPU (float64 there too): the same PSNR, SSIM and per-volume means as on the CPU."""
    gt, pred = _random((4, 33, 20), 11)
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    for fn in (torch_metrics.psnr, torch_metrics.ssim):
        on_gpu = fn(g.cuda(), p.cuda(), torch.tensor(1.3, dtype=torch.float64, device="cuda"))
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float64
        torch.testing.assert_close(on_gpu.cpu(), fn(g, p, 1.3), rtol=0, atol=1e-12)
    slices = _slices(12)
    on_gpu, oracle = _scored(slices, "cuda"), _numpy_means(slices)
    assert on_gpu["PSNR"] == pytest.approx(oracle["PSNR"], abs=1e-9)
    assert on_gpu["SSIM"] == pytest.approx(oracle["SSIM"], abs=1e-12)
