"""DC-UNet `ULCm`: m cascades of a small L-level U-Net, each followed by data consistency.

The heterogeneous teacher of the paper's Table 6 (DC-UNet teacher, D3C5 student; the paper
cites Sun et al. 2019 and gives no size, so the block below is our own small U-Net).
`U2C5` = 2 resolution levels, 5 cascades. Block (C = `channels`, w_l = C * 2^(l-1)):

    enc1   3x3 conv 1 -> C, ReLU                         level 1 (full resolution)
    enc2   3x3 conv C -> C, ReLU                         level 1   -> skip 1
    down_l 2x2 max pool, 3x3 conv w_(l-1) -> w_l, ReLU   level l = 2..L (skip l for l < L)
    up_l   2x2 stride-2 transposed conv w_(l+1) -> w_l, ReLU      level l = L-1..1
    dec_l  3x3 conv on [skip l, up_l] (2 w_l) -> w_l, ReLU        level l
    out    3x3 conv C -> 1 (linear)                      level 1, then data consistency

Choices: no residual from the block input and no batch norm, like the DnCm blocks of this
project (the reference DC-CNN), so that the Table 6 comparison changes only the block; one
conv per pooled level and per decoder level keeps U2C5 cheap on a CPU: 275,205 parameters
(1.9x D5C5) but about 1.25x the multiply-adds of D5C5 per pixel, the pooled level costing a
quarter (a training step at 128x128 on one CPU thread measured 1.25x D5C5's). Parameters for
L = 2: 53 C^2 + 24 C + 1 per cascade. dec_l runs as two convs on the halves of its weight,
summed (the same products as one conv on the concatenation, without the concatenated copy,
whose backward hands strided gradient views to slow CPU paths: 10 % faster).

Complex data (`Acquisition(values="complex", channels=2)`): enc1 reads 2 channels and out
writes 2 (real, imaginary), the data consistency keeps the complex result (mri/dc.py).

Sizes: the block zero-pads its input by `pad` pixels on every side (as the DnCm blocks, the
reference's pad of 5), then on the bottom and right up to a multiple of 2^(L-1) so that every
pooling is exact (odd sizes such as 11x9 work), runs same-size convs, and crops back.

Taps (`c{cascade}.{local}`): enc1, enc2, down2..downL, then up_l, dec_l from level L-1 down
to 1, then out; hidden taps after their ReLU, `out` before DC. Every tap is returned at the
image size: maps of a pooled level l are upsampled by nearest-neighbour repetition (each
value covers its 2^(l-1) x 2^(l-1) patch), then the padding is cropped. Default roles:
output = out, last_hidden = dec1 (feeds the output conv), hidden_before_last = enc2 (the
last full-resolution conv before dec1; up1, the transposed conv, has a 2x2-periodic pattern
that a plain-conv student cannot mimic), so AT pairs a DnCm student's conv{n-1} with enc2.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.choices import architecture_named
from sftkd_cli.errors import SftkdError
from sftkd_cli.models.base import DataConsistentCascade
from sftkd_cli.models.family import MAGNITUDE_OR_COMPLEX, MAX_CASCADES, Family
from sftkd_cli.models.traceable import dc_architecture, exportable_dc
from sftkd_cli.mri.dc import DataConsistency

_NAME = re.compile(r"^U(\d+)C(\d+)$")
MAX_LEVELS = 4


def parse_unet_name(name: str) -> tuple[int, int]:
    """'U2C5' -> (2 resolution levels, 5 cascades)."""
    match = _NAME.match(name.strip().upper())
    if not match:
        raise SftkdError(f"model {name!r}: expected a name like U2C5 (U-Net levels, m cascades)")
    levels, cascades = int(match.group(1)), int(match.group(2))
    if not 2 <= levels <= MAX_LEVELS or cascades < 1:
        raise SftkdError(f"model {name!r}: needs 2 to {MAX_LEVELS} U-Net levels and at least 1 cascade")
    return levels, cascades


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


def _conv_on_concat(conv: nn.Conv2d, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`conv(cat([skip, up], dim=1))` as two convs on the halves of its weight, summed.

    Exactly the same sum of products, without the concatenated copy; on a CPU the backward of
    the concatenation hands the decoder strided gradient views (slow paths), this does not.
    """
    split = skip.shape[1]
    return F.conv2d(skip, conv.weight[:, :split], None, padding=1) + F.conv2d(up, conv.weight[:, split:], conv.bias, padding=1)


class UNetBlock(nn.Module):
    """One cascade's U-Net: pad, encoder, decoder with skip concatenation, output conv, crop."""

    def __init__(self, levels: int, channels: int = 32, pad: int = 5, image_channels: int = 1) -> None:
        super().__init__()
        self.image_channels = image_channels
        self.levels, self.pad = levels, pad
        widths = [channels * 2**level for level in range(levels)]  # widths[l - 1] = w_l
        self.widths = widths
        self.enc1 = _conv(image_channels, channels)
        self.enc2 = _conv(channels, channels)
        self.down = nn.ModuleList(_conv(widths[i - 1], widths[i]) for i in range(1, levels))  # down2..downL
        self.up = nn.ModuleList(  # up1..up(L-1)
            nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in range(levels - 1)
        )
        self.dec = nn.ModuleList(_conv(2 * widths[i], widths[i]) for i in range(levels - 1))  # dec1..dec(L-1)
        self.out = _conv(channels, image_channels)

    def tap_channels(self) -> dict[str, int]:
        """Local tap names in forward order with their channel counts."""
        taps = {"enc1": self.widths[0], "enc2": self.widths[0]}
        taps.update({f"down{level}": self.widths[level - 1] for level in range(2, self.levels + 1)})
        for level in range(self.levels - 1, 0, -1):
            taps[f"up{level}"] = taps[f"dec{level}"] = self.widths[level - 1]
        taps["out"] = self.image_channels
        return taps

    def forward(self, x: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the block; when `taps` is a dict, store each conv output at the image size."""
        height, width = x.shape[-2], x.shape[-1]
        p, multiple = self.pad, 2 ** (self.levels - 1)
        extra_h, extra_w = (-(height + 2 * p)) % multiple, (-(width + 2 * p)) % multiple
        h = F.pad(x, (p, p + extra_w, p, p + extra_h)) if p or extra_h or extra_w else x

        def keep(name: str, value: torch.Tensor, level: int) -> None:
            if taps is not None:
                scale = 2 ** (level - 1)
                if scale > 1:
                    value = F.interpolate(value, scale_factor=scale, mode="nearest")
                taps[name] = value[..., p : p + height, p : p + width]

        h = F.relu(self.enc1(h))
        keep("enc1", h, 1)
        h = F.relu(self.enc2(h))
        keep("enc2", h, 1)
        skips = [h]
        for level, conv in enumerate(self.down, start=2):
            h = F.relu(conv(F.max_pool2d(h, 2)))
            keep(f"down{level}", h, level)
            skips.append(h)
        for level in range(self.levels - 1, 0, -1):
            h = F.relu(self.up[level - 1](h))
            keep(f"up{level}", h, level)
            h = F.relu(_conv_on_concat(self.dec[level - 1], skips[level - 1], h))
            keep(f"dec{level}", h, level)
        h = self.out(h)
        keep("out", h, 1)
        return h[..., p : p + height, p : p + width]


class DCUNet(DataConsistentCascade):
    """The DC-UNet `ULCm` (L U-Net levels per block, m cascades)."""

    def __init__(
        self, levels: int, cascades: int, channels: int = 32, pad: int = 5, acquisition: Acquisition | None = None
    ) -> None:
        super().__init__()
        self.levels, self.cascades, self.channels = levels, cascades, channels
        self.acquisition = acquisition or Acquisition()
        self.blocks = nn.ModuleList(UNetBlock(levels, channels, pad, self.acquisition.channels) for _ in range(cascades))
        self.dc = DataConsistency(centered=self.acquisition.centered,
                                  complex_values=self.acquisition.values == "complex")

    @property
    def name(self) -> str:
        return f"U{self.levels}C{self.cascades}"

    def block_taps(self, index: int) -> dict[str, int]:
        return self.blocks[index].tap_channels()

    def default_tap(self, cascade: int, role: str) -> str:
        return {"output": "out", "last_hidden": "dec1", "hidden_before_last": "enc2"}[role]


def build_dcunet(name: str, acquisition: Acquisition, channels: int = 32, pad: int = 5) -> DCUNet:
    """Build `ULCm` from its name, its data consistency in the acquisition's k-space layout."""
    levels, cascades = parse_unet_name(name)
    return DCUNet(levels, cascades, channels=channels, pad=pad, acquisition=acquisition)


def _architecture(model: DCUNet, fixed: bool) -> dict[str, Any]:
    return dc_architecture(model, {"levels": model.levels}, fixed)  # a U-Net block's depth is its levels


FAMILY = Family(
    r"U(\d+)C(\d+)", architecture_named("U2C5"), build_dcunet,
    (("U-Net levels", MAX_LEVELS), ("cascades", MAX_CASCADES)),
    exportable=exportable_dc, architecture=_architecture, accepts=MAGNITUDE_OR_COMPLEX,
)
