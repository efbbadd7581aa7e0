"""DC-CNN `DnCm`: m cascades of an n-layer CNN block, each followed by data consistency.

Matches the paper's reference network: every block zero-pads its input by `pad` pixels,
runs n 3x3 convolutions (1 -> C -> ... -> C -> 1, ReLU between, no residual, no batch norm),
crops the padding away, then a hard data-consistency layer replaces the sampled k-space.

No padding waste: when `pad` >= n (the paper: pad 5), the block pads by n and runs UNPADDED
("valid") convolutions, each map shrinking by 2 pixels, instead of computing every layer on
the full padded map and cropping at the end. The output and every tapped feature are exactly
the same (each output pixel only ever sees input within n pixels, all inside the zero pad);
the work drops by 5-10 % and no crop copies are made. ReLUs run in place (a conv does not need
its output for its backward), which halves the memory traffic between layers.

Every conv output can be tapped by name for distillation: `c{cascade}.conv{layer}`
(both 1-based; hidden layers after their ReLU, the last layer before DC). Taps are cropped
to the image size. Tapping costs nothing when no tap is asked for.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli.errors import SftkdError
from sftkd_cli.models.base import DataConsistentCascade
from sftkd_cli.mri.dc import DataConsistency

_NAME = re.compile(r"^D(\d+)C(\d+)$")


def parse_name(name: str) -> tuple[int, int]:
    """'D5C5' -> (5 conv layers per block, 5 cascades)."""
    match = _NAME.match(name.strip().upper())
    if not match:
        raise SftkdError(f"model {name!r}: expected a name like D5C5 (n conv layers, m cascades)")
    layers, cascades = int(match.group(1)), int(match.group(2))
    if layers < 2 or cascades < 1:
        raise SftkdError(f"model {name!r}: needs at least 2 conv layers and 1 cascade")
    return layers, cascades


class CNNBlock(nn.Module):
    """One cascade's CNN: pad, n convs with ReLU between, crop.

    `valid=False` forces the reference code's way (every conv padded on the full map, crop at
    the end); `sftkd bench` times it to measure what the shortcut saves.
    """

    def __init__(self, layers: int, channels: int = 32, pad: int = 5, valid: bool = True) -> None:
        super().__init__()
        self.pad = pad
        self.valid = valid and pad >= layers  # exact shortcut, see the module docstring
        widths = [1] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, kernel_size=3, padding=0 if self.valid else 1)
            for cin, cout in zip(widths, widths[1:])
        )

    def forward(self, x: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the block; when `taps` is a dict, store each conv output (cropped) as 'conv{j}'."""
        last = len(self.convs)
        p = last if self.valid else self.pad
        h = F.pad(x, (p, p, p, p)) if p else x
        for index, conv in enumerate(self.convs, start=1):
            h = conv(h)
            if index < last:
                h = F.relu(h, inplace=True)
            if taps is not None:
                taps[f"conv{index}"] = _crop(h, last - index if self.valid else p)
        return h if self.valid else _crop(h, p)


def _crop(x: torch.Tensor, p: int) -> torch.Tensor:
    return x[..., p : x.shape[-2] - p, p : x.shape[-1] - p] if p else x


class DCCNN(DataConsistentCascade):
    """The deep-cascade network DnCm (n conv layers per block, m cascades)."""

    def __init__(
        self, layers: int, cascades: int, channels: int = 32, pad: int = 5, centered: bool = False, valid: bool = True
    ) -> None:
        super().__init__()
        self.layers, self.cascades, self.channels = layers, cascades, channels
        self.blocks = nn.ModuleList(CNNBlock(layers, channels, pad, valid) for _ in range(cascades))
        self.dc = DataConsistency(centered=centered)

    @property
    def name(self) -> str:
        return f"D{self.layers}C{self.cascades}"

    def block_taps(self, index: int) -> dict[str, int]:
        return {f"conv{j}": (1 if j == self.layers else self.channels) for j in range(1, self.layers + 1)}

    def default_tap(self, cascade: int, role: str) -> str:
        hidden = {"last_hidden": 1, "hidden_before_last": 2}
        return f"conv{self.layers}" if role == "output" else f"conv{max(1, self.layers - hidden[role])}"


def build_dccnn(name: str, channels: int = 32, pad: int = 5, centered: bool = False) -> DCCNN:
    """Build `DnCm` from its name."""
    layers, cascades = parse_name(name)
    return DCCNN(layers, cascades, channels=channels, pad=pad, centered=centered)
