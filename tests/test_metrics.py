"""Metrics against independent oracles: scikit-image, hand-computed values, explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.data import shepp_logan_phantom
from skimage.filters import laplace as skimage_laplace
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from sftkd_cli import metrics as M
from sftkd_cli.errors import SftkdError


def _phantom(size: int = 64) -> np.ndarray:
    """Shepp-Logan phantom in [0, 1], float64."""
    img = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    return img / img.max()


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, gt, pred) test pairs: random images and a noisy phantom, odd sizes included."""
    rng = np.random.default_rng(0)
    gt_rand = rng.random((33, 40))
    phantom = _phantom(64)
    return [
        ("random", gt_rand, gt_rand + 0.1 * rng.standard_normal(gt_rand.shape)),
        ("phantom", phantom, phantom + 0.03 * rng.standard_normal(phantom.shape)),
    ]


# ------------------------------------------------------------------------ PSNR / SSIM


@pytest.mark.parametrize("name,gt,pred", _pairs())
@pytest.mark.parametrize("data_range", [1.0, 0.7, 2.5])
def test_psnr_ssim_match_skimage(name: str, gt: np.ndarray, pred: np.ndarray, data_range: float) -> None:
    assert M.psnr(gt, pred, data_range) == pytest.approx(
        peak_signal_noise_ratio(gt, pred, data_range=data_range), rel=1e-12
    )
    assert M.ssim(gt, pred, data_range) == pytest.approx(
        structural_similarity(gt, pred, data_range=data_range), rel=1e-12
    )


def test_ssim_of_volume_is_mean_of_slices_and_float32_is_computed_in_float64() -> None:
    rng = np.random.default_rng(1)
    gt = rng.random((3, 20, 24)).astype(np.float32)
    pred = (gt + 0.05 * rng.standard_normal(gt.shape)).astype(np.float32)
    r = float(gt.max())
    g64, p64 = gt.astype(np.float64), pred.astype(np.float64)
    expected = np.mean([structural_similarity(g, p, data_range=r) for g, p in zip(g64, p64)])
    assert M.ssim(gt, pred, r) == pytest.approx(expected, rel=1e-12)


def test_psnr_hand_values() -> None:
    gt = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert M.psnr(gt, gt + 0.1, 1.0) == pytest.approx(20.0)  # MSE 0.01
    assert M.psnr(gt, gt + 0.1, 10.0) == pytest.approx(40.0)
    assert M.psnr(gt, gt, 1.0) == math.inf


# ------------------------------------------------------------------------ NMSE / MSE


def test_nmse_mse_by_hand() -> None:
    gt = np.array([[1.0, 2.0], [3.0, 4.0]])  # ||gt||^2 = 30
    pred = np.array([[1.0, 2.0], [3.0, 3.0]])  # one error of 1
    assert M.mse(gt, pred) == pytest.approx(0.25)
    assert M.nmse(gt, pred) == pytest.approx(1.0 / 30.0)
    pred2 = np.array([[0.0, 2.0], [3.0, 6.0]])  # errors 1 and 2 -> 5
    assert M.mse(gt, pred2) == pytest.approx(1.25)
    assert M.nmse(gt, pred2) == pytest.approx(5.0 / 30.0)
    assert M.nmse(gt, gt) == 0.0


def test_nmse_of_zero_ground_truth_is_nan() -> None:
    assert math.isnan(M.nmse(np.zeros((4, 4)), np.ones((4, 4))))


# ------------------------------------------------------------------------------ HFN


def _reflect(i: int, n: int) -> int:
    """Index under half-sample reflection (-1 -> 0, n -> n-1), valid for one-pixel overhang."""
    if i < 0:
        return -i - 1
    if i >= n:
        return 2 * n - i - 1
    return i


def _laplacian_loop(img: np.ndarray) -> np.ndarray:
    """Explicit double loop: 4 neighbours minus 4x centre, reflected borders."""
    h, w = img.shape
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = (
                img[_reflect(i - 1, h), j]
                + img[_reflect(i + 1, h), j]
                + img[i, _reflect(j - 1, w)]
                + img[i, _reflect(j + 1, w)]
                - 4.0 * img[i, j]
            )
    return out


def test_laplacian_hand_checked_corner_impulse() -> None:
    img = np.zeros((3, 3))
    img[0, 0] = 1.0  # reflected borders: the corner sees itself above and to the left
    expected = np.array([[-2.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(M.laplacian_3x3(img), expected)


def test_hfn_matches_double_loop_and_reference_skimage_laplace() -> None:
    rng = np.random.default_rng(2)
    gt = rng.random((5, 5))
    pred = gt + 0.4 * rng.standard_normal((5, 5))  # leaves [0, 1]: exercises the clip
    np.testing.assert_allclose(M.laplacian_3x3(gt), _laplacian_loop(gt), atol=1e-12)
    lg, lp = _laplacian_loop(gt), _laplacian_loop(np.clip(pred, 0.0, 1.0))
    expected = np.sum((lg - lp) ** 2) / np.sum(lg**2)
    assert M.hfn(gt, pred) == pytest.approx(expected, rel=1e-12)
    # the reference's own tool (opposite sign kernel, same reflect boundary)
    sg, sp = skimage_laplace(gt), skimage_laplace(np.clip(pred, 0.0, 1.0))
    assert M.hfn(gt, pred) == pytest.approx(np.sum((sg - sp) ** 2) / np.sum(sg**2), rel=1e-12)


def test_hfn_hand_checked_centre_impulse() -> None:
    gt = np.zeros((3, 3))
    gt[1, 1] = 1.0  # L(gt) = [[0,1,0],[1,-4,1],[0,1,0]], ||L(gt)||^2 = 20
    np.testing.assert_allclose(M.laplacian_3x3(gt), M.LAPLACIAN_3X3)
    assert M.hfn(gt, np.zeros((3, 3))) == pytest.approx(1.0)
    assert M.hfn(gt, 0.5 * gt) == pytest.approx(0.25)  # error (0.5)^2 * 20 / 20
    assert M.hfn(gt, 2.0 * gt) == pytest.approx(0.0)  # clipped back to gt
    assert M.hfn(gt, -gt) == pytest.approx(1.0)  # clipped to zero
    assert math.isnan(M.hfn(np.ones((3, 3)), np.zeros((3, 3))))  # no edges in gt


# ----------------------------------------------------------------------------- HFEN


def _log_kernel(sigma: float) -> np.ndarray:
    """LoG kernel built by hand: second derivative of the sampled, normalised Gaussian, radius 4 sigma."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    g /= g.sum()
    d2 = (x**2 / sigma**4 - 1.0 / sigma**2) * g
    return np.outer(d2, g) + np.outer(g, d2)


def test_hfen_matches_explicit_log_convolution() -> None:
    for _, gt, pred in _pairs():
        k = _log_kernel(1.5)
        lg = convolve2d(gt, k, mode="same", boundary="symm")
        lp = convolve2d(pred, k, mode="same", boundary="symm")
        expected = np.linalg.norm(lg - lp) / np.linalg.norm(lg)
        assert M.hfen(gt, pred) == pytest.approx(expected, rel=1e-9)
    gt = _phantom(32)
    assert M.hfen(gt, gt) == 0.0
    assert M.hfen(gt, np.zeros_like(gt)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ VIF


def _gauss2d(n: int) -> np.ndarray:
    """fspecial('gaussian', n, n/5) written as a full 2-D grid."""
    ax = np.arange(n) - (n - 1) / 2.0
    xx, yy = np.meshgrid(ax, ax)
    w = np.exp(-(xx**2 + yy**2) / (2.0 * (n / 5.0) ** 2))
    return w / w.sum()


def _pixel_terms(s1: float, s2: float, s12: float, sigma_nsq: float) -> tuple[float, float]:
    """Clamps of vifp_mscale.m applied to one pixel, in their original order."""
    eps = 1e-10
    s1, s2 = max(s1, 0.0), max(s2, 0.0)
    g = s12 / (s1 + eps)
    sv = s2 - g * s12
    if s1 < eps:
        g, sv, s1 = 0.0, s2, 0.0
    if s2 < eps:
        g, sv = 0.0, 0.0
    if g < 0:
        sv, g = s2, 0.0
    sv = max(sv, eps)
    return math.log10(1 + g * g * s1 / (sv + sigma_nsq)), math.log10(1 + s1 / sigma_nsq)


def _oracle_vif_terms(gt: np.ndarray, pred: np.ndarray, scales: int = 4) -> list[tuple[float, float]]:
    """Independent VIFp: 2-D windows, convolve2d 'valid', per-pixel loop for the clamps."""
    ref, dist = 255.0 * gt, 255.0 * pred
    terms = []
    for scale in range(1, scales + 1):
        n = 2 ** (5 - scale) + 1
        w = _gauss2d(n)
        if scale > 1:
            ref = convolve2d(ref, w, mode="valid")[::2, ::2]
            dist = convolve2d(dist, w, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, w, mode="valid"), convolve2d(dist, w, mode="valid")
        s1 = convolve2d(ref * ref, w, mode="valid") - mu1**2
        s2 = convolve2d(dist * dist, w, mode="valid") - mu2**2
        s12 = convolve2d(ref * dist, w, mode="valid") - mu1 * mu2
        num = den = 0.0
        for a, b, c in zip(s1.ravel(), s2.ravel(), s12.ravel()):
            pn, pd = _pixel_terms(float(a), float(b), float(c), 2.0)
            num, den = num + pn, den + pd
        terms.append((num, den))
    return terms


def test_vif_terms_match_independent_oracle_on_all_four_scales() -> None:
    for _, gt, pred in _pairs()[1:]:  # the 64x64 phantom: all 4 scales fit
        ours = M.vif_terms(gt, pred)
        oracle = _oracle_vif_terms(gt, pred)
        assert [t[0] for t in ours] == [1, 2, 3, 4]
        for (_, num, den), (onum, oden) in zip(ours, oracle):
            assert num == pytest.approx(onum, rel=1e-7)
            assert den == pytest.approx(oden, rel=1e-7)
        expected = sum(t[0] for t in oracle) / sum(t[1] for t in oracle)
        assert M.vif(gt, pred) == pytest.approx(expected, rel=1e-7)


def test_vif_identical_images_is_one() -> None:
    rng = np.random.default_rng(3)
    for img in (_phantom(64), rng.random((40, 37)), _phantom(32), rng.random((16, 16))):
        assert M.vif(img, img) == pytest.approx(1.0, abs=1e-6)


def test_vif_decreases_as_noise_grows() -> None:
    gt = _phantom(64)
    noise = np.random.default_rng(4).standard_normal(gt.shape)
    values = [M.vif(gt, gt + s * noise) for s in (0.0, 0.005, 0.01, 0.03, 0.1, 0.3)]
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_vif_contrast_enhancement_exceeds_one() -> None:
    gt = _phantom(64)
    stretched = gt.mean() + 1.2 * (gt - gt.mean())  # a noiseless linear contrast stretch
    assert M.vif(gt, stretched) > 1.0


def test_vif_small_images() -> None:
    rng = np.random.default_rng(5)
    gt = rng.random((32, 32))
    assert [t[0] for t in M.vif_terms(gt, gt)] == [1, 2]  # scales 3 and 4 no longer fit
    small = rng.random((16, 16))
    pred = small + 0.05 * rng.standard_normal(small.shape)
    terms = M.vif_terms(small, pred)
    assert len(terms) == 1  # one scale with a 15x15 window, sigma 3
    assert 0.0 < M.vif(small, pred) < 1.0
    with pytest.raises(SftkdError, match="3x3"):
        M.vif(np.ones((2, 5)), np.ones((2, 5)))


def test_vif_window_is_normalised_gaussian() -> None:
    w = M.vif_window_1d(9)
    np.testing.assert_allclose(np.outer(w, w), _gauss2d(9), atol=1e-15)


# ------------------------------------------------------------------ volumes


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """(3,32,32) gt in [0, 1] (max 1 on slice 1 only) and a prediction with slice-varying error."""
    rng = np.random.default_rng(6)
    base = _phantom(32)
    gt = np.stack([0.6 * base, base, 0.8 * np.roll(base, 3, axis=0)])
    noise = rng.standard_normal(gt.shape) * np.array([0.01, 0.03, 0.06])[:, None, None]
    return gt, gt + noise


def test_score_slices_shapes_and_volume_max_convention() -> None:
    gt, pred = _volume()
    per = M.score_slices(gt, pred)
    assert tuple(per) == M.METRIC_NAMES == tuple(M.CONVENTIONS)
    for values in per.values():
        assert values.shape == (3,) and values.dtype == np.float64
    for s in range(3):  # data_range = max of the volume, not of the slice
        assert per["PSNR"][s] == pytest.approx(peak_signal_noise_ratio(gt[s], pred[s], data_range=1.0))
        assert per["SSIM"][s] == pytest.approx(structural_similarity(gt[s], pred[s], data_range=1.0))
        assert per["NMSE"][s] == pytest.approx(M.nmse(gt[s], pred[s]))
        assert per["MSE"][s] == pytest.approx(np.mean((gt[s] - pred[s]) ** 2))
        assert per["HFN"][s] == pytest.approx(M.hfn(gt[s], pred[s]))
        assert per["HFEN"][s] == pytest.approx(M.hfen(gt[s], pred[s]))
        assert per["VIF"][s] == pytest.approx(M.vif(gt[s], pred[s]))
    assert per["PSNR"][0] != pytest.approx(peak_signal_noise_ratio(gt[0], pred[0], data_range=gt[0].max()))


def test_scaling_gt_and_pred_together_changes_nothing_scale_free() -> None:
    gt, pred = _volume()
    a, b = M.score_slices(gt, pred), M.score_slices(3.0 * gt, 3.0 * pred)
    for name in ("PSNR", "SSIM", "NMSE", "HFEN", "VIF"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(b["MSE"], 9.0 * a["MSE"], rtol=1e-12)
    assert M.score_volume(3.0 * gt, 3.0 * pred)["PSNR"] == pytest.approx(M.score_volume(gt, pred)["PSNR"])


def test_score_volume_psnr_is_whole_volume_and_below_mean_of_slices() -> None:
    gt, pred = _volume()
    per = M.score_slices(gt, pred)
    vol = M.score_volume(gt, pred)
    assert vol["PSNR"] == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=1.0))
    # volume MSE is the mean of slice MSEs, so volume PSNR = -10 log10(mean 10^(-PSNR_s/10))
    assert vol["PSNR"] == pytest.approx(-10.0 * np.log10(np.mean(10.0 ** (-per["PSNR"] / 10.0))))
    assert vol["PSNR"] < per["PSNR"].mean() - 0.1  # Jensen: strictly lower when slice MSEs differ
    for name in ("SSIM", "MSE", "HFN", "HFEN", "VIF"):
        assert vol[name] == pytest.approx(per[name].mean())
    assert M.score_volume(gt, pred, per_slice=per) == vol
    assert all(isinstance(v, float) for v in vol.values())


def test_score_volume_is_the_reference_evaluate_py_per_volume() -> None:
    """The per-volume values equal those of the paper's reference evaluate.py, written here as it
    computes them on an (H, W, S) volume: skimage PSNR and multichannel SSIM with data_range =
    gt.max(), NMSE = ||gt - pred||^2 / ||gt||^2 as ONE ratio, MSE over the volume, HFN the mean of
    the slices' ratios of skimage's laplace with the prediction clipped to [0, 1]."""
    from skimage.filters import laplace

    gt, pred = _volume()
    vol = M.score_volume(gt, pred)
    g, p = gt.transpose(1, 2, 0), pred.transpose(1, 2, 0)
    hfn = [np.sum((laplace(g[..., i]) - laplace(np.clip(p[..., i], 0, 1))) ** 2) / np.sum(laplace(g[..., i]) ** 2)
           for i in range(g.shape[-1])]
    reference = {"PSNR": peak_signal_noise_ratio(g, p, data_range=g.max()),
                 "SSIM": structural_similarity(g, p, channel_axis=2, data_range=g.max()),
                 "NMSE": np.linalg.norm(g - p) ** 2 / np.linalg.norm(g) ** 2,
                 "MSE": np.mean((g - p) ** 2), "HFN": np.mean(hfn)}
    for name, value in reference.items():
        assert vol[name] == pytest.approx(value, rel=1e-9), name
    assert vol["NMSE"] != pytest.approx(M.score_slices(gt, pred)["NMSE"].mean(), rel=1e-3)  # not the mean of the slice ratios


def test_clipping_only_inside_hfn() -> None:
    gt, pred = _volume()
    clipped = np.clip(pred, 0.0, 1.0)
    assert not np.array_equal(pred, clipped)
    a, b = M.score_slices(gt, pred), M.score_slices(gt, clipped)
    np.testing.assert_allclose(a["HFN"], b["HFN"], rtol=1e-12)
    assert not np.allclose(a["PSNR"], b["PSNR"])
    assert not np.allclose(a["MSE"], b["MSE"])


def test_empty_slice_gives_nan_and_volume_mean_skips_it() -> None:
    gt, pred = _volume()
    gt[2] = 0.0
    per = M.score_slices(gt, pred)
    for name in ("NMSE", "HFN", "HFEN", "VIF"):
        assert math.isnan(per[name][2]) and np.all(np.isfinite(per[name][:2])), name
    vol = M.score_volume(gt, pred, per_slice=per)
    assert vol["HFN"] == pytest.approx(per["HFN"][:2].mean())
    assert vol["NMSE"] == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt**2))  # one ratio: defined
    assert np.isfinite(per["PSNR"][2]) and np.isfinite(per["SSIM"][2])


def test_identical_volumes() -> None:
    gt, _ = _volume()
    vol = M.score_volume(gt, gt.copy())
    assert vol["PSNR"] == math.inf and vol["SSIM"] == pytest.approx(1.0)
    assert vol["NMSE"] == vol["MSE"] == vol["HFN"] == vol["HFEN"] == 0.0
    assert vol["VIF"] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------- errors


def test_user_errors() -> None:
    with pytest.raises(SftkdError, match=r"\(3, 32, 32\).*\(3, 32, 31\)"):
        M.score_slices(np.zeros((3, 32, 32)), np.zeros((3, 32, 31)))
    with pytest.raises(SftkdError, match="3-D"):
        M.score_slices(np.ones((32, 32)), np.ones((32, 32)))
    with pytest.raises(SftkdError, match="maximum"):
        M.score_volume(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(SftkdError, match="NaN"):
        M.mse(np.ones((4, 4)), np.full((4, 4), np.nan))
    with pytest.raises(SftkdError, match="complex"):
        M.mse(np.ones((4, 4)), np.ones((4, 4), dtype=np.complex64))
    with pytest.raises(SftkdError, match="data_range"):
        M.psnr(np.ones((4, 4)), np.zeros((4, 4)), 0.0)
    with pytest.raises(SftkdError, match="7x7"):
        M.ssim(np.ones((5, 9)), np.ones((5, 9)), 1.0)
    with pytest.raises(SftkdError, match="per_slice"):
        M.score_volume(np.ones((2, 8, 8)), np.ones((2, 8, 8)), per_slice={"PSNR": np.zeros(2)})


def test_summaries_of_infinite_or_all_nan_scores_warn_nothing():
    """An exact slice's PSNR is inf, and HFN is NaN for every slice without energy: the summaries
    say inf / NaN without numpy's RuntimeWarning lines on evaluate's stderr."""
    import warnings

    from sftkd_cli.scoring import summarise

    per_slice = {m: np.array([0.5, 0.7]) for m in M.METRIC_NAMES}
    per_slice["PSNR"], per_slice["HFN"] = np.array([30.0, np.inf]), np.array([np.nan, np.nan])
    per_volume = [{m: float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for m, v in per_slice.items()}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = summarise(per_slice, per_volume)
        volumes = M.summarise_volumes([{"MSE": 0.0, "NMSE": 0.0, "PSNR": math.inf, "SSIM": 1.0},
                                       {"MSE": 0.1, "NMSE": 0.1, "PSNR": 30.0, "SSIM": 0.9}])
    assert summary["PSNR"]["mean"] == math.inf and math.isnan(summary["PSNR"]["std"])
    assert all(math.isnan(summary["HFN"][key]) for key in ("mean", "std", "volume_mean"))
    assert summary["SSIM"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1), "volume_mean": pytest.approx(0.6)}
    assert volumes["PSNR"]["mean"] == math.inf and math.isnan(volumes["PSNR"]["std"])
