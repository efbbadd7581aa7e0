"""Image-quality metrics: PSNR, SSIM, NMSE, MSE, HFN, HFEN, VIF (numpy in, floats / arrays out).

Conventions. The PER-VOLUME values of `score_volume` are those of the paper's reference
evaluate.py for PSNR, SSIM, NMSE, MSE and HFN (it has no HFEN or VIF): PSNR and NMSE on the
whole volume at once, SSIM and HFN the mean over the volume's slices. The reference averages those
per-volume values over volumes (`volume_mean` in metrics.json); sftkd's headline is the mean ± std
over SLICES of the per-slice values (`score_slices`), which the reference's evaluate.py does not
compute (its measures.py writes per-slice values with each SLICE's maximum as data range, where
sftkd's use the volume's).
- Images are real, ground truth normalised per volume to [0, 1]. Everything is computed in float64.
- PSNR = 10 log10(data_range^2 / MSE). `score_slices` and `score_volume` use data_range = the
  maximum of the ground-truth VOLUME for every slice; the per-volume PSNR is computed on the
  whole volume at once (not the mean of the slice PSNRs). Identical images give +inf.
- SSIM = scikit-image `structural_similarity` defaults (7x7 uniform window, K1 0.01, K2 0.03,
  sample covariance, mean over the map without the 3-pixel border), per 2-D slice.
- NMSE = ||gt - pred||^2 / ||gt||^2, per slice, and per volume as ONE ratio over the whole volume
  (not the mean of the slice ratios); MSE = mean((gt - pred)^2).
- PSNR, SSIM, NMSE, MSE and HFEN use the prediction as it is (NOT clipped).
- HFN (reference convention) = ||L(gt) - L(clip(pred, 0, 1))||^2 / ||L(gt)||^2, per slice,
  L = 3x3 discrete Laplacian [[0,1,0],[1,-4,1],[0,1,0]] with 'reflect' boundaries
  (scipy.ndimage, edge pixel repeated: ... b a | a b ...), as skimage.filters.laplace used by
  the reference. Squared norms, no square root. The whole slice counts, as in scikit-image >= 0.17;
  its laplace up to 0.16 set the outermost rows and columns to 0. The reference's imports
  (skimage.metrics, new in 0.16; skimage.measure.compare_psnr, gone in 0.18) fit either version.
- HFEN (Ravishankar & Bresler 2011) = ||LoG(gt) - LoG(pred)||_2 / ||LoG(gt)||_2, a ratio of
  L2 norms (not squared), LoG = scipy.ndimage.gaussian_laplace(sigma=1.5, truncate 4,
  'reflect' boundaries).
- VIF = pixel-domain VIF (VIFp) of Sheikh & Bovik (2006), as their vifp_mscale.m: 4 scales,
  Gaussian windows of size N = 2^(4-scale+1)+1 (17, 9, 5, 3) and sigma N/5, 'valid' filtering,
  filter-and-decimate by 2 between scales, sigma_nsq = 2, VIF = sum of numerators / sum of
  denominators over scales. The images are first rescaled by 255 / data_range (data_range = the
  ground-truth volume maximum, 1 for our normalised data) so that sigma_nsq = 2 means what it
  means in VIFp: a noise variance of 2 grey levels^2 on an 8-bit scale. (On raw [0, 1] images
  sigma_nsq = 2 would dwarf every local variance and VIF would barely react to noise: noise of
  std 0.01 on a 150x150 Shepp-Logan phantom scores 1.0005 there, 0.81 here.) Coarse scales
  that no longer fit the image are skipped (a 32x32 image uses scales 1-2); an image smaller
  than 17x17 gets one scale with the largest odd window n <= min(H, W) and sigma n/5.
- Ratio metrics (NMSE, HFN, HFEN, VIF) are NaN where their denominator is zero (a ground truth
  with no energy / no edges / no variance); `score_volume` averages slices with `nanmean`.

The fastMRI convention (`score_fastmri`, `sftkd evaluate --convention fastmri`) is the one of
the `fastmri` package's evaluate.py, whose functions the tests use as oracles: per VOLUME,
MSE = mean((gt - pred)^2), NMSE = ||gt - pred||^2 / ||gt||^2 as ONE ratio over the whole volume
(as the paper convention's per-volume NMSE), PSNR = skimage peak_signal_noise_ratio over
the whole volume with data_range = gt.max(), SSIM = mean over slices of skimage
structural_similarity (defaults) with data_range = gt.max() of the volume. Summaries are mean and
sample std (ddof 1, runstats' stddev) over volumes. Complex reconstructions are scored as their
magnitude, centre-cropped to the target's size (`center_crop`, fastMRI's formula).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# scipy.ndimage and skimage.metrics are imported where used: importing both would add about
# 0.4 s to the start of every process that imports this module.
from sftkd_cli.choices import FASTMRI_METRIC_NAMES, METRIC_NAMES, SSIM_WINDOW
from sftkd_cli.errors import SftkdError

CONVENTIONS: dict[str, str] = {
    "PSNR": "10*log10(R^2/MSE), R = max of the ground-truth volume; per slice, and per volume "
    "on the whole volume at once; prediction not clipped; identical images give inf",
    "SSIM": "skimage structural_similarity defaults (7x7 uniform window, K1=0.01, K2=0.03), "
    "data_range = max of the ground-truth volume, per 2-D slice; prediction not clipped",
    "NMSE": "||gt-pred||^2/||gt||^2 per slice; volume value = one ratio over the whole volume",
    "MSE": "mean((gt-pred)^2) per slice; volume value = mean over slices",
    "HFN": "||L(gt)-L(clip(pred,0,1))||^2/||L(gt)||^2 per slice, L = 3x3 Laplacian "
    "[[0,1,0],[1,-4,1],[0,1,0]], reflect boundary; volume value = mean over slices",
    "HFEN": "||LoG(gt)-LoG(pred)||_2/||LoG(gt)||_2 per slice, LoG sigma 1.5 "
    "(scipy gaussian_laplace, reflect boundary); volume value = mean over slices",
    "VIF": "pixel-domain VIF (Sheikh & Bovik), 4 scales, Gaussian windows N=17,9,5,3 sigma N/5, "
    "sigma_nsq=2 on images rescaled by 255/R (R = max of the ground-truth volume), pred not "
    "clipped, per slice; volume value = mean over slices",
}

LAPLACIAN_3X3: np.ndarray = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])

_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10


# ---------------------------------------------------------------------------- input checks


def _pair(gt: np.ndarray, pred: np.ndarray, ndims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (gt, pred) pair (same shape, allowed rank, real, finite); return float64 copies."""
    gt_a, pred_a = np.asarray(gt), np.asarray(pred)
    if gt_a.shape != pred_a.shape:
        raise SftkdError(
            f"metrics: gt shape {gt_a.shape} and pred shape {pred_a.shape}: expected equal shapes"
        )
    if gt_a.ndim not in ndims:
        allowed = " or ".join(f"{n}-D" for n in ndims)
        raise SftkdError(f"metrics: image shape {gt_a.shape}: expected a {allowed} array")
    for name, arr in (("gt", gt_a), ("pred", pred_a)):
        if np.iscomplexobj(arr):
            raise SftkdError(f"metrics: {name} is complex: expected a real image (take the magnitude)")
        if not np.all(np.isfinite(arr)):
            raise SftkdError(f"metrics: {name} contains NaN or inf: expected finite values")
    return gt_a.astype(np.float64), pred_a.astype(np.float64)


def _check_range(data_range: float) -> float:
    """data_range must be a finite positive number."""
    value = float(data_range)
    if not np.isfinite(value) or value <= 0:
        raise SftkdError(f"metrics: data_range {data_range!r}: expected a finite value > 0")
    return value


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is zero (the metric is undefined)."""
    return float(num / den) if den > 0 else float("nan")


def _slice_mean(fn: Callable[[np.ndarray, np.ndarray], float], gt: np.ndarray, pred: np.ndarray) -> float:
    """Apply a 2-D metric to an image, or to each slice of a volume and average (nanmean)."""
    if gt.ndim == 2:
        return fn(gt, pred)
    values = np.array([fn(g, p) for g, p in zip(gt, pred)])
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")


# ------------------------------------------------------------------------ pixel-wise metrics


def mse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error mean((gt - pred)^2) over all elements (any shape)."""
    g, p = _pair(gt, pred, (1, 2, 3))
    return float(np.mean((g - p) ** 2))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MSE ||gt - pred||^2 / ||gt||^2 over all elements; NaN if gt is all zero."""
    g, p = _pair(gt, pred, (1, 2, 3))
    return _ratio(float(np.sum((g - p) ** 2)), float(np.sum(g**2)))


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """PSNR in dB = 10 log10(data_range^2 / MSE) over all elements; +inf for identical images.

    `data_range` is explicit on purpose: the reference's evaluate.py scores a whole volume with the
    ground-truth volume maximum, and sftkd's per-slice values use that volume maximum too (see
    `score_slices`; the reference's measures.py uses each slice's own). The prediction is not clipped.
    """
    r = _check_range(data_range)
    err = mse(gt, pred)
    if err == 0.0:
        return float("inf")
    return float(10.0 * np.log10(r**2 / err))


# ----------------------------------------------------------------------------- SSIM


def _ssim_2d(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """scikit-image SSIM with its defaults on one 2-D slice."""
    if min(gt.shape) < SSIM_WINDOW:
        raise SftkdError(f"metrics: image shape {gt.shape}: SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    from skimage.metrics import structural_similarity

    return float(structural_similarity(gt, pred, data_range=data_range))


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """SSIM (skimage defaults: 7x7 uniform window) of a 2-D image, or mean over the slices of a volume."""
    r = _check_range(data_range)
    g, p = _pair(gt, pred, (2, 3))
    return _slice_mean(lambda a, b: _ssim_2d(a, b, r), g, p)


# ------------------------------------------------------------------------ edge metrics


def laplacian_3x3(image: np.ndarray) -> np.ndarray:
    """3x3 discrete Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of a 2-D image, 'reflect' boundary.

    'reflect' repeats the edge pixel (... b a | a b ...), the scipy.ndimage default used by
    skimage.filters.laplace in the reference (whose kernel has the opposite sign; HFN is the same).
    The border pixels are kept, as scikit-image >= 0.17 keeps them (0.16 and older zeroed them).
    """
    from scipy import ndimage

    return ndimage.convolve(np.asarray(image, dtype=np.float64), LAPLACIAN_3X3, mode="reflect")


def _hfn_2d(gt: np.ndarray, pred: np.ndarray) -> float:
    """HFN of one slice; the prediction is clipped to [0, 1] as the reference does."""
    lg = laplacian_3x3(gt)
    lp = laplacian_3x3(np.clip(pred, 0.0, 1.0))
    return _ratio(float(np.sum((lg - lp) ** 2)), float(np.sum(lg**2)))


def hfn(gt: np.ndarray, pred: np.ndarray) -> float:
    """High-frequency error norm, the reference's convention (squared ratio, 3x3 Laplacian).

    ||L(gt) - L(clip(pred, 0, 1))||^2 / ||L(gt)||^2 for a 2-D image; for a volume, the mean of
    the per-slice values. NaN where L(gt) is zero everywhere (e.g. a constant slice).
    """
    g, p = _pair(gt, pred, (2, 3))
    return _slice_mean(_hfn_2d, g, p)


def _hfen_2d(gt: np.ndarray, pred: np.ndarray, sigma: float) -> float:
    """HFEN of one slice (ratio of L2 norms of LoG-filtered images)."""
    from scipy import ndimage

    lg = ndimage.gaussian_laplace(gt, sigma=sigma, mode="reflect")
    lp = ndimage.gaussian_laplace(pred, sigma=sigma, mode="reflect")
    return _ratio(float(np.linalg.norm(lg - lp)), float(np.linalg.norm(lg)))


def hfen(gt: np.ndarray, pred: np.ndarray, sigma: float = 1.5) -> float:
    """High-frequency error norm of Ravishankar & Bresler: ||LoG(gt)-LoG(pred)||_2 / ||LoG(gt)||_2.

    LoG = scipy.ndimage.gaussian_laplace (sigma 1.5, truncate 4, 'reflect'); a ratio of L2
    norms (not squared); prediction not clipped. Volumes: mean of the per-slice values.
    """
    if not sigma > 0:
        raise SftkdError(f"metrics: hfen sigma {sigma!r}: expected a value > 0")
    g, p = _pair(gt, pred, (2, 3))
    return _slice_mean(lambda a, b: _hfen_2d(a, b, sigma), g, p)


# ----------------------------------------------------------------------------- VIF


def vif_window_1d(size: int) -> np.ndarray:
    """1-D factor of MATLAB's fspecial('gaussian', size, size/5): the 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x**2) / (2.0 * (size / 5.0) ** 2))
    return w / w.sum()


def _filter_valid(image: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable correlation with outer(win, win), keeping only the 'valid' part (MATLAB filter2 'valid')."""
    from scipy import ndimage

    r = len(win) // 2
    out = ndimage.correlate1d(image, win, axis=0, mode="constant")
    out = ndimage.correlate1d(out, win, axis=1, mode="constant")
    return out[r : image.shape[0] - r, r : image.shape[1] - r]


def _vif_scale(ref: np.ndarray, dist: np.ndarray, win: np.ndarray, sigma_nsq: float) -> tuple[float, float]:
    """(numerator, denominator) of VIFp at one scale, with the clamps of vifp_mscale.m."""
    mu1, mu2 = _filter_valid(ref, win), _filter_valid(dist, win)
    s1 = np.maximum(_filter_valid(ref * ref, win) - mu1 * mu1, 0.0)
    s2 = np.maximum(_filter_valid(dist * dist, win) - mu2 * mu2, 0.0)
    s12 = _filter_valid(ref * dist, win) - mu1 * mu2

    g = s12 / (s1 + _VIF_EPS)
    sv = s2 - g * s12
    flat_ref = s1 < _VIF_EPS
    g[flat_ref] = 0.0
    sv[flat_ref] = s2[flat_ref]
    s1[flat_ref] = 0.0
    flat_dist = s2 < _VIF_EPS
    g[flat_dist] = 0.0
    sv[flat_dist] = 0.0
    negative = g < 0
    sv[negative] = s2[negative]
    g[negative] = 0.0
    sv = np.maximum(sv, _VIF_EPS)

    num = float(np.sum(np.log10(1.0 + g * g * s1 / (sv + sigma_nsq))))
    den = float(np.sum(np.log10(1.0 + s1 / sigma_nsq)))
    return num, den


def vif_terms(
    gt: np.ndarray, pred: np.ndarray, data_range: float = 1.0, sigma_nsq: float = _VIF_SIGMA_NSQ
) -> list[tuple[int, float, float]]:
    """Per-scale VIFp terms [(scale, numerator, denominator), ...] of one 2-D image pair.

    Both images are multiplied by 255 / data_range first (sigma_nsq is in 8-bit grey levels^2).
    Scale s uses a Gaussian window of size N = 2^(4-s+1)+1 and sigma N/5; for s > 1 both
    images are first filtered ('valid') with that window and decimated by 2. Scales whose
    window no longer fits are skipped (none after them can fit either). Images smaller than
    17x17 get a single scale with the largest odd window n <= min(H, W), sigma n/5.
    """
    ref, dist = _pair(gt, pred, (2,))
    if not sigma_nsq > 0:
        raise SftkdError(f"metrics: vif sigma_nsq {sigma_nsq!r}: expected a value > 0")
    to_8bit = 255.0 / _check_range(data_range)
    ref, dist = ref * to_8bit, dist * to_8bit
    small = min(ref.shape)
    if small < 3:
        raise SftkdError(f"metrics: image shape {ref.shape}: VIF needs at least 3x3 pixels")
    if small < 17:
        n = small if small % 2 == 1 else small - 1
        return [(1, *_vif_scale(ref, dist, vif_window_1d(n), sigma_nsq))]

    terms: list[tuple[int, float, float]] = []
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        win = vif_window_1d(size)
        if scale > 1:
            if min(ref.shape) < size:
                break
            ref = _filter_valid(ref, win)[::2, ::2]
            dist = _filter_valid(dist, win)[::2, ::2]
        if min(ref.shape) < size:
            break
        terms.append((scale, *_vif_scale(ref, dist, win, sigma_nsq)))
    return terms


def _vif_2d(gt: np.ndarray, pred: np.ndarray, data_range: float, sigma_nsq: float) -> float:
    """VIFp of one slice: sum of numerators / sum of denominators; NaN if the denominator is 0."""
    terms = vif_terms(gt, pred, data_range, sigma_nsq)
    return _ratio(sum(t[1] for t in terms), sum(t[2] for t in terms))


def vif(
    gt: np.ndarray, pred: np.ndarray, data_range: float = 1.0, sigma_nsq: float = _VIF_SIGMA_NSQ
) -> float:
    """Pixel-domain visual information fidelity (Sheikh & Bovik), see `vif_terms`.

    1.0 for identical images, lower for distortions, can exceed 1 for contrast enhancement.
    Images are rescaled by 255 / data_range (default 1: our [0, 1] data) before VIFp with
    sigma_nsq = 2. The prediction is not clipped. Volumes: mean of the per-slice values.
    """
    g, p = _pair(gt, pred, (2, 3))
    return _slice_mean(lambda a, b: _vif_2d(a, b, data_range, sigma_nsq), g, p)


# ------------------------------------------------------------------------- volumes


def _volume_pair(gt_volume: np.ndarray, pred_volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate (S,H,W) volumes; return float64 copies and data_range = max of the gt volume."""
    g, p = _pair(gt_volume, pred_volume, (3,))
    data_range = float(g.max())
    if data_range <= 0:
        raise SftkdError(
            f"metrics: ground-truth volume maximum {data_range:g}: expected > 0 (PSNR/SSIM data range)"
        )
    return g, p, data_range


def score_slices(gt_volume: np.ndarray, pred_volume: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice metrics of a (S,H,W) volume: {name: array (S,)} for every name in METRIC_NAMES.

    PSNR, SSIM (and VIF's 8-bit rescaling) use data_range = the ground-truth VOLUME maximum for
    every slice, the data range of the reference's per-volume evaluate.py (its per-slice
    measures.py uses the slice's). pred is not clipped, except inside HFN (clipped to [0, 1] as
    the reference).
    """
    g, p, r = _volume_pair(gt_volume, pred_volume)
    per_slice: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for gs, ps in zip(g, p):
        per_slice["PSNR"].append(psnr(gs, ps, r))
        per_slice["SSIM"].append(_ssim_2d(gs, ps, r))
        per_slice["NMSE"].append(nmse(gs, ps))
        per_slice["MSE"].append(mse(gs, ps))
        per_slice["HFN"].append(_hfn_2d(gs, ps))
        per_slice["HFEN"].append(_hfen_2d(gs, ps, 1.5))
        per_slice["VIF"].append(_vif_2d(gs, ps, r, _VIF_SIGMA_NSQ))
    return {name: np.asarray(values, dtype=np.float64) for name, values in per_slice.items()}


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN (undefined slices); NaN if every slice is undefined."""
    return float("nan") if np.all(np.isnan(values)) else float(np.nanmean(values))


def score_volume(
    gt_volume: np.ndarray,
    pred_volume: np.ndarray,
    per_slice: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Per-volume metrics {name: float}, those of the reference's evaluate.py where it has them:
    PSNR (data_range = volume max) and NMSE on the whole volume, every other metric the mean over
    slices of `score_slices` (NaN slices left out; for MSE that equals the whole volume's).

    Pass `per_slice` (the output of `score_slices` on the same volumes) to avoid recomputing it.
    The volume PSNR is <= the mean of the slice PSNRs (equal only if every slice has the same MSE).
    """
    g, p, r = _volume_pair(gt_volume, pred_volume)
    slices = score_slices(g, p) if per_slice is None else per_slice
    for name in METRIC_NAMES:
        if name not in slices or np.shape(slices[name]) != (g.shape[0],):
            raise SftkdError(
                f"metrics: per_slice[{name!r}]: expected an array of {g.shape[0]} slice values"
            )
    out = {name: _nanmean(np.asarray(slices[name], dtype=np.float64)) for name in METRIC_NAMES}
    out["PSNR"], out["NMSE"] = psnr(g, p, r), nmse(g, p)
    return out


# ------------------------------------------------------------------------ fastMRI convention

FASTMRI_CONVENTIONS: dict[str, str] = {
    "MSE": "mean((gt-pred)^2) over the whole volume (fastmri.evaluate.mse)",
    "NMSE": "||gt-pred||^2/||gt||^2, one ratio over the whole volume (fastmri.evaluate.nmse)",
    "PSNR": "10*log10(R^2/MSE) over the whole volume, R = gt.max() of the volume (fastmri.evaluate.psnr)",
    "SSIM": "mean over slices of skimage structural_similarity (defaults), data_range = gt.max() of the "
    "volume (fastmri.evaluate.ssim)",
    "images": "magnitude of the reconstruction, centre-cropped to the target's size (fastMRI's "
    "reconstruction_esc when the dataset has it); prediction not clipped",
    "aggregation": "per volume; mean and sample std (ddof 1, as fastMRI's runstats) over volumes; "
    "std NaN (null in metrics.json) for one volume",
}


def magnitude(image: np.ndarray) -> np.ndarray:
    """(C,H,W) -> (H,W): a one-channel image as it is, a two-channel complex one (real,
    imaginary) as its magnitude |x| (float32, as a complex64 reconstruction's)."""
    if image.shape[0] == 1:
        return image[0]
    if image.shape[0] != 2:
        raise SftkdError(f"metrics: image of {image.shape[0]} channels: expected 1 (magnitude) or 2 (real, imaginary)")
    return np.abs(image[0].astype(np.float32) + 1j * image[1].astype(np.float32)).astype(np.float32)


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The central `shape` of the last two axes, as fastmri.data.transforms.center_crop cuts it."""
    height, width = int(shape[0]), int(shape[1])
    if not (0 < height <= image.shape[-2] and 0 < width <= image.shape[-1]):
        raise SftkdError(f"metrics: cannot centre-crop an image of {image.shape[-2]}x{image.shape[-1]} "
                         f"to {height}x{width}; expected a crop inside the image")
    top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
    return image[..., top : top + height, left : left + width]


def score_fastmri(gt_volume: np.ndarray, pred_volume: np.ndarray) -> dict[str, float]:
    """fastMRI's per-volume metrics {MSE, NMSE, PSNR, SSIM} of a (S,H,W) volume (float64; see the module docstring)."""
    g, p, r = _volume_pair(gt_volume, pred_volume)
    return {"MSE": mse(g, p), "NMSE": nmse(g, p), "PSNR": psnr(g, p, r), "SSIM": ssim(g, p, r)}


def summarise_volumes(per_volume: list[dict[str, float]], names: tuple[str, ...] = FASTMRI_METRIC_NAMES) -> dict[str, dict[str, float]]:
    """mean and sample std (ddof 1; NaN for one volume) over volumes of each metric; volume_mean = mean."""
    out = {}
    for name in names:
        values = np.asarray([v[name] for v in per_volume], dtype=np.float64)
        mean = float(np.mean(values)) if len(values) else float("nan")
        with np.errstate(invalid="ignore"):  # an infinite PSNR (an exact volume): std NaN, no warning line
            std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        out[name] = {"mean": mean, "std": std, "volume_mean": mean}
    return out
