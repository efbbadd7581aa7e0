"""DC-CNN `DnCm`: m cascades of an n-layer CNN block, each followed by data consistency.

Matches the paper's reference network: every block zero-pads its input by `pad` pixels,
runs n 3x3 convolutions (1 -> C -> ... -> C -> 1, ReLU between, no residual, no batch norm),
crops the padding away, then a hard data-consistency layer replaces the sampled k-space.

Every conv output can be tapped by name for distillation: `c{cascade}.conv{layer}`
(both 1-based; hidden layers after their ReLU, the last layer before DC). Taps are cropped
to the image size. Tapping costs nothing when no tap is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli.errors import SftkdError
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
    """One cascade's CNN: pad, n convs with ReLU between, crop."""

    def __init__(self, layers: int, channels: int = 32, pad: int = 5) -> None:
        super().__init__()
        widths = [1] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1) for cin, cout in zip(widths, widths[1:])
        )
        self.pad = pad

    def forward(self, x: torch.Tensor, taps: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the block; when `taps` is a dict, store each conv output (cropped) by 1-based index."""
        p = self.pad
        h = F.pad(x, (p, p, p, p)) if p else x
        last = len(self.convs)
        for index, conv in enumerate(self.convs, start=1):
            h = conv(h)
            if index < last:
                h = F.relu(h)
            if taps is not None:
                taps[index] = h[..., p : h.shape[-2] - p, p : h.shape[-1] - p] if p else h
        return h[..., p : h.shape[-2] - p, p : h.shape[-1] - p] if p else h


class DCCNN(nn.Module):
    """The deep-cascade network DnCm (n conv layers per block, m cascades)."""

    def __init__(
        self, layers: int, cascades: int, channels: int = 32, pad: int = 5, centered: bool = False
    ) -> None:
        super().__init__()
        self.layers, self.cascades, self.channels = layers, cascades, channels
        self.blocks = nn.ModuleList(CNNBlock(layers, channels, pad) for _ in range(cascades))
        self.dc = DataConsistency(centered=centered)

    @property
    def name(self) -> str:
        return f"D{self.layers}C{self.cascades}"

    def tap_names(self) -> list[str]:
        """All tappable feature names, in forward order."""
        return [f"c{c}.conv{j}" for c in range(1, self.cascades + 1) for j in range(1, self.layers + 1)]

    def tap_channels(self, name: str) -> int:
        """Channel count of a tapped feature."""
        _, layer = self._split_tap(name)
        return 1 if layer == self.layers else self.channels

    def _split_tap(self, name: str) -> tuple[int, int]:
        match = re.match(r"^c(\d+)\.conv(\d+)$", name)
        if not match or not (1 <= int(match.group(1)) <= self.cascades) or not (
            1 <= int(match.group(2)) <= self.layers
        ):
            raise SftkdError(
                f"feature tap {name!r}: {self.name} has taps c1.conv1 .. c{self.cascades}.conv{self.layers}"
            )
        return int(match.group(1)), int(match.group(2))

    def cascade(
        self,
        index: int,
        x: torch.Tensor,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        taps: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Block `index` (0-based) followed by data consistency."""
        return self.dc(self.blocks[index](x, taps), kspace, mask)

    def forward(
        self,
        zf: torch.Tensor,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        taps: Collection[str] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct from the zero-filled image. With `taps`, also return those features by name."""
        if taps is None:
            x = zf
            for index in range(self.cascades):
                x = self.cascade(index, x, kspace, mask)
            return x
        wanted = [self._split_tap(name) for name in taps]
        cascades_needed = {c for c, _ in wanted}
        features: dict[str, torch.Tensor] = {}
        x = zf
        for index in range(self.cascades):
            store: dict[int, torch.Tensor] | None = {} if index + 1 in cascades_needed else None
            x = self.cascade(index, x, kspace, mask, store)
            if store is not None:
                for c, j in wanted:
                    if c == index + 1:
                        features[f"c{c}.conv{j}"] = store[j]
        return x, features


def build_model(name: str, channels: int = 32, pad: int = 5, centered: bool = False) -> DCCNN:
    """Build `DnCm` from its name."""
    layers, cascades = parse_name(name)
    return DCCNN(layers, cascades, channels=channels, pad=pad, centered=centered)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
