"""PSNR and SSIM on torch tensors, on their device: `metrics.py`'s conventions without numpy.

Training validates every epoch; scoring there on the GPU, batched over slices, spares a copy of
every prediction to the host. The conventions are exactly `sftkd_cli.metrics`' (psnr, ssim):
- float64 (float32 only on devices without float64, e.g. Apple's mps);
- PSNR = 10 log10(R^2 / MSE) per image, +inf for identical images, prediction not clipped;
- SSIM = scikit-image `structural_similarity` defaults: 7x7 uniform window, K1 0.01, K2 0.03,
  sample covariance (49/48), mean over the map without its 3-pixel border. Only windows that
  lie inside the image are averaged, so the border handling of the filter never matters and
  the means over the windows inside the image give the same map;
- complex images (two channels, real and imaginary) are scored as their magnitude, a float32
  image as `metrics.magnitude`'s: |x| rounded once to float32 (numpy's complex64 abs can be
  1 ulp off that; the metrics move by ~1e-7 relative at most).

Nothing here waits for the device: the data range may be a tensor, and a tensor's value is not
checked (that would copy it to the host). `SliceScores` scores slices with data range = the
maximum of their volume's ground truth and checks ranges and predictions once, at the end.
"""

from __future__ import annotations

import torch

from sftkd_cli.errors import SftkdError
from sftkd_cli.choices import SSIM_WINDOW

#: scikit-image's SSIM constants (its defaults, used by metrics.ssim)
SSIM_K1 = 0.01
SSIM_K2 = 0.03

Range = float | torch.Tensor


def metric_dtype(device: torch.device) -> torch.dtype:
    """float64, the metrics' precision; float32 on mps, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _pair(gt: torch.Tensor, pred: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a (gt, pred) pair of real images (..., H, W); return both in the metric dtype."""
    if gt.shape != pred.shape:
        raise SftkdError(f"metrics: gt shape {tuple(gt.shape)} and pred shape {tuple(pred.shape)}: expected equal shapes")
    if gt.dim() < 2:
        raise SftkdError(f"metrics: image shape {tuple(gt.shape)}: expected images (..., H, W)")
    for name, tensor in (("gt", gt), ("pred", pred)):
        if tensor.is_complex() or not tensor.is_floating_point():
            raise SftkdError(f"metrics: {name} has dtype {tensor.dtype}: expected a real float image for {what} "
                             "(take the magnitude)")
    dtype = metric_dtype(gt.device)
    return gt.to(dtype), pred.to(dtype)


def _range(data_range: Range, like: torch.Tensor) -> torch.Tensor:
    """The data range as a tensor of `like`'s dtype and device, broadcast over the image axes.

    A number must be finite and > 0 (checked here); a tensor is taken as it is (see module doc)."""
    if not isinstance(data_range, torch.Tensor):
        value = float(data_range)
        if not (value > 0 and value != float("inf")):
            raise SftkdError(f"metrics: data_range {data_range!r}: expected a finite value > 0")
        return torch.tensor(value, dtype=like.dtype, device=like.device)
    return data_range.to(device=like.device, dtype=like.dtype)


def psnr(gt: torch.Tensor, pred: torch.Tensor, data_range: Range) -> torch.Tensor:
    """PSNR in dB of each image (..., H, W) -> (...): 10 log10(R^2 / mean((gt - pred)^2)).

    `data_range` R: a number, or a tensor broadcastable to the leading axes (one range per
    image). +inf for identical images; the prediction is not clipped (metrics.psnr)."""
    g, p = _pair(gt, pred, "PSNR")
    r = _range(data_range, g)
    mse = (g - p).square().mean(dim=(-2, -1))
    return 10.0 * torch.log10(r.square() / mse)


def ssim(gt: torch.Tensor, pred: torch.Tensor, data_range: Range) -> torch.Tensor:
    """SSIM of each image (..., H, W) -> (...), scikit-image's structural_similarity defaults.

    7x7 uniform window, K1 0.01, K2 0.03, sample covariance, mean over the windows inside the
    image (skimage's map without its 3-pixel border); `data_range` as in `psnr`. Images are
    scored a few at a time (`_images_per_chunk`), which bounds the memory of the statistics."""
    g, p = _pair(gt, pred, "SSIM")
    height, width = g.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise SftkdError(f"metrics: image shape {(height, width)}: SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    lead = g.shape[:-2]
    g, p = g.reshape(-1, height, width), p.reshape(-1, height, width)
    r = _range(data_range, g).expand(lead).reshape(-1)
    step = _images_per_chunk(g.device, height * width)
    return torch.cat([_ssim_chunk(g[i : i + step], p[i : i + step], r[i : i + step])
                      for i in range(0, g.shape[0], step)]).reshape(lead)


def _images_per_chunk(device: torch.device, pixels: int) -> int:
    """Images SSIM scores at once: on a CPU about 2^16 pixels (the statistics stay in cache:
    measured 3-4x faster than whole volumes), elsewhere about 2^22 (~200 MB of statistics)."""
    budget = 2**16 if device.type == "cpu" else 2**22
    return max(1, budget // pixels)


def _ssim_chunk(g: torch.Tensor, p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """SSIM of images (n,H,W) with ranges (n,): skimage's formula on the 7x7 window means."""
    ux, uy, uxx, uyy, uxy = _window_means(torch.stack([g, p, g * g, p * p, g * p])).unbind(0)
    cov_norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    r = r.reshape(-1, 1, 1)
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(-2, -1))


def _window_means(x: torch.Tensor) -> torch.Tensor:
    """The mean of every SSIM_WINDOW x SSIM_WINDOW window inside the images x (..., H, W):
    (..., H-6, W-6). Separable sums of shifted views, 12 additions a pixel (a 2-D pooling
    kernel does 49 and was measured 4x slower on CPUs)."""
    w = SSIM_WINDOW
    rows, cols = x.shape[-2] - w + 1, x.shape[-1] - w + 1
    down = x[..., :rows, :].clone()
    for i in range(1, w):
        down += x[..., i : i + rows, :]
    out = down[..., :cols].clone()
    for i in range(1, w):
        out += down[..., i : i + cols]
    return out / (w * w)


def magnitude(images: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) -> (N,H,W): one-channel images as they are, two-channel ones (real,
    imaginary) as |x| computed in float64 and rounded to float32 (`metrics.magnitude`'s float32
    image, the same on every device)."""
    if images.dim() != 4 or images.shape[1] not in (1, 2):
        raise SftkdError(f"metrics: images of shape {tuple(images.shape)}: expected (N, 1 or 2 channels, H, W)")
    if images.shape[1] == 1:
        return images[:, 0]
    dtype = metric_dtype(images.device)
    return torch.hypot(images[:, 0].to(dtype), images[:, 1].to(dtype)).float()


class NonFinitePrediction(SftkdError):
    """A scored prediction holds nan or inf (training's validation names the run and epoch)."""


class SliceScores:
    """PSNR and SSIM of slices with data range = the maximum of their volume's ground truth
    (over the slices added), as `score_slices` and training's validation score them.

    The slices of one volume come one after another (a SliceDataset's order); a volume's
    images stay on the device until the next volume starts, then it is scored there. `means()`
    waits for the device once and checks what scoring could not check without waiting: every
    range > 0, every prediction finite.
    """

    def __init__(self) -> None:
        self._volume: str | None = None
        self._targets: list[torch.Tensor] = []
        self._preds: list[torch.Tensor] = []
        self._done: set[str] = set()
        self._psnr: list[torch.Tensor] = []
        self._ssim: list[torch.Tensor] = []
        self._ranges: list[torch.Tensor] = []
        self._finite: list[torch.Tensor] = []

    def add(self, volume: str, target: torch.Tensor, pred: torch.Tensor) -> None:
        """One slice (H,W) of `volume`: real images, the prediction as the model gave it."""
        if volume != self._volume:
            if volume in self._done:
                raise SftkdError(f"metrics: volume {volume!r} continues after other volumes' slices; "
                                 "expected the slices of each volume one after another")
            self._score_volume()
            self._volume = volume
        self._targets.append(target)
        self._preds.append(pred)

    def _score_volume(self) -> None:
        """Score the current volume's slices (queued on the device) and let its images go."""
        if self._volume is None:
            return
        dtype = metric_dtype(self._targets[0].device)  # once here, not in psnr and again in ssim
        target, pred = torch.stack(self._targets).to(dtype), torch.stack(self._preds).to(dtype)
        data_range = target.amax()
        self._psnr.append(psnr(target, pred, data_range))
        self._ssim.append(ssim(target, pred, data_range))
        self._ranges.append(data_range.reshape(1))
        self._finite.append(torch.isfinite(pred).all().reshape(1))
        self._done.add(self._volume)
        self._volume, self._targets, self._preds = None, [], []

    def means(self) -> dict[str, float]:
        """{"PSNR", "SSIM"}: the means over all slices added (one wait for the device)."""
        self._score_volume()
        if not self._psnr:
            raise SftkdError("metrics: no slices to score")
        ranges = torch.cat(self._ranges)
        summary = torch.stack([torch.cat(self._psnr).mean(), torch.cat(self._ssim).mean(),
                               ranges.min(), torch.cat(self._finite).all().to(ranges.dtype)]).tolist()
        psnr_mean, ssim_mean, smallest, finite = summary
        if not (smallest > 0 and smallest != float("inf")):
            raise SftkdError(f"metrics: ground-truth volume maximum {smallest:g}: expected > 0 (PSNR/SSIM data range)")
        if not finite:
            raise NonFinitePrediction("metrics: pred contains NaN or inf: expected finite values")
        return {"PSNR": psnr_mean, "SSIM": ssim_mean}
